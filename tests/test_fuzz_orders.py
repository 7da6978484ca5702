"""Property-based: arbitrary ids, styles, counts, request ids and page tokens sent to OrderService get a defined status with a reason, never UNKNOWN or INTERNAL; a refused order costs nothing and stores nothing."""

from __future__ import annotations

import base64
import datetime as dt
import json

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceharmony.core import ids
from faceharmony.core.db import models as m
from faceharmony.v1 import order_pb2 as o
from tests.support.harness import status_of
from tests.support.orders import balance, ready_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NEVER = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
text = st.one_of(st.text(max_size=80), st.sampled_from(["", " ", "\x00", "x" * 300, "0" * 32, "g" * 32, ids.new_id()]))
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def _token(when: dt.datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([when.isoformat(), row_id]).encode()).decode().rstrip("=")


# Well-formed tokens (what the server issues: base64 of [ISO time, id]) with any time and offset, extremes
# included, so decoding succeeds and the time reaches the query.
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
tokens = st.one_of(
    text,
    st.builds(_token, st.datetimes(timezones=offsets), st.sampled_from([ids.new_id(), "0" * 32])),
    st.sampled_from(
        [
            _token(dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), "0" * 32),
            _token(dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone(dt.timedelta(hours=-1))), "0" * 32),
        ]
    ),
)


def state(h):
    return h.db_call(lambda: (m.Order.select().count(), m.OrderImage.select().count(), m.CreditEntry.select().count()))


@FUZZ
@given(
    data=st.data(), style=st.one_of(text, st.just("studio")), count=st.one_of(int32, st.integers(0, 9)), request_id=text
)
def test_create_order_fuzz(harness, data, style, count, request_id):
    h = harness
    if not hasattr(h, "fuzz_user"):
        h.fuzz_user = h.sign_up("fuzz-orders@example.com")
        h.fuzz_models = [ready_model(h, h.fuzz_user) for _ in range(2)]
    user = h.fuzz_user
    model_ids = data.draw(st.lists(st.one_of(text, st.sampled_from(h.fuzz_models)), max_size=6))
    before, credits = state(h), balance(h, user)
    req = o.CreateOrderRequest(model_ids=model_ids, style_id=style, count=count, request_id=request_id)
    code, reason = status_of(h.orders.CreateOrder, req, metadata=user.md)
    assert code not in NEVER, (code, req)
    if code != grpc.StatusCode.OK:
        assert reason
        assert state(h) == before and balance(h, user) == credits
    else:
        assert balance(h, user) == credits - len(model_ids) * count or state(h) == before  # new order, or a replay


@FUZZ
@given(photo_id=text, order_id=text, page_token=tokens, page_size=int32, photo_state=int32)
def test_order_reads_and_photo_actions_fuzz(harness, photo_id, order_id, page_token, page_size, photo_state):
    h = harness
    if not hasattr(h, "fuzz_user"):
        h.fuzz_user = h.sign_up("fuzz-photos@example.com")
    md = h.fuzz_user.md
    calls = [
        (h.orders.GetOrder, o.GetOrderRequest(id=order_id)),
        (h.orders.ListOrders, o.ListOrdersRequest(page_size=page_size, page_token=page_token)),
        (
            h.orders.ListGeneratedPhotos,
            o.ListGeneratedPhotosRequest(
                order_id=order_id, state=photo_state, page_size=page_size, page_token=page_token
            ),
        ),
        (h.orders.GetGeneratedPhotoPreview, o.GetGeneratedPhotoPreviewRequest(id=photo_id)),
        (lambda r, **kw: list(h.orders.DownloadGeneratedPhoto(r, **kw)), o.DownloadGeneratedPhotoRequest(id=photo_id)),
        (h.orders.RejectGeneratedPhoto, o.RejectGeneratedPhotoRequest(id=photo_id)),
        (h.orders.DeleteGeneratedPhoto, o.DeleteGeneratedPhotoRequest(id=photo_id)),
        (lambda r, **kw: list(h.orders.WatchOrder(r, **kw)), o.WatchOrderRequest(id=order_id)),
    ]
    for call, req in calls:
        code, reason = status_of(call, req, metadata=md)
        assert code not in NEVER, (code, req)
        assert code == grpc.StatusCode.OK or reason, (code, req)
