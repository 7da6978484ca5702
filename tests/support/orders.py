"""Helpers for order tests: READY models without running a trainer, and order API shortcuts."""

from __future__ import annotations

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.core.db.connection import write_transaction
from faceharmony.v1 import order_pb2 as o


def ready_model(
    h, user, adapter_blob_id: str | None = None, metadata_blob_id: str | None = None, trigger_token: str = "sks"
) -> str:
    """A READY model of `user` with version 1 (the adapter blob, if given, must exist in models/)."""

    def insert() -> str:
        with write_transaction(h.db):
            now = h.clock.now()
            key_id = m.Account.get_by_id(user.account_id).key_id  # everything the account owns uses its key
            model = m.UserModel.create(
                id=ids.new_id(),
                account=user.account_id,
                key_id=key_id,
                display_name="Me",
                state="ready",
                progress=1.0,
                trigger_token=trigger_token,
                current_version=1,
                created_at=now,
                updated_at=now,
            )
            job = m.TrainingJob.create(
                id=ids.new_id(),
                model=model.id,
                kind="train",
                state="succeeded",
                attempts=1,
                max_attempts=3,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
            m.ModelVersion.create(
                id=ids.new_id(),
                model=model.id,
                version=1,
                job=job.id,
                adapter_blob_id=adapter_blob_id or ids.new_id(),
                metadata_blob_id=metadata_blob_id or ids.new_id(),
                base_fingerprint="0" * 64,
                created_at=now,
                key_id=key_id,
            )
            return model.id

    return h.db_call(insert)


def order(h, user, model_ids, count=1, style_id="studio", request_id="") -> o.Order:
    return h.orders.CreateOrder(
        o.CreateOrderRequest(model_ids=model_ids, style_id=style_id, count=count, request_id=request_id),
        metadata=user.md,
    ).order


def balance(h, user) -> int:
    from faceharmony.v1 import purchase_pb2 as pp

    return h.purchases.GetBalance(pp.GetBalanceRequest(), metadata=user.md).credits
