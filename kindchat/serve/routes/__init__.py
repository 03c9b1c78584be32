"""One router per resource: chat, models, feedback, arena, conversations, sessions, health
(+ metrics, bootstrap) and admin."""
