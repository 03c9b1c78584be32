"""`GET /v1/models`: the served names and the versions they answer with now."""

from __future__ import annotations

from fastapi import APIRouter

from kindchat.serve.deps import ManagerDep
from kindchat.serve.protocol import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(manager: ManagerDep) -> ModelList:
    return ModelList(
        data=[
            ModelCard(id=n.name, version=n.version, alias=n.alias, note=n.note)
            for n in manager.names()
        ]
    )


@router.get("/models/{model_id}")
def get_model(model_id: str, manager: ManagerDep) -> ModelCard:
    n = manager.resolve(model_id)
    return ModelCard(id=n.name, version=n.version, alias=n.alias, note=n.note)
