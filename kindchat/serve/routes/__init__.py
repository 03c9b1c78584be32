"""One router per resource: chat, models, feedback, arena, health (+ metrics, admin)."""
