import datetime

from faceharmony.v1 import options_pb2 as _options_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Store(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORE_UNSPECIFIED: _ClassVar[Store]
    STORE_APP_STORE: _ClassVar[Store]
    STORE_GOOGLE_PLAY: _ClassVar[Store]

class PurchaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURCHASE_STATE_UNSPECIFIED: _ClassVar[PurchaseState]
    PURCHASE_STATE_GRANTED: _ClassVar[PurchaseState]
    PURCHASE_STATE_REVOKED: _ClassVar[PurchaseState]
STORE_UNSPECIFIED: Store
STORE_APP_STORE: Store
STORE_GOOGLE_PLAY: Store
PURCHASE_STATE_UNSPECIFIED: PurchaseState
PURCHASE_STATE_GRANTED: PurchaseState
PURCHASE_STATE_REVOKED: PurchaseState

class Purchase(_message.Message):
    __slots__ = ("id", "store", "product_id", "transaction_id", "credits", "create_time", "purchase_time", "quantity", "state", "revoke_time", "environment")
    ID_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    id: str
    store: Store
    product_id: str
    transaction_id: str
    credits: int
    create_time: _timestamp_pb2.Timestamp
    purchase_time: _timestamp_pb2.Timestamp
    quantity: int
    state: PurchaseState
    revoke_time: _timestamp_pb2.Timestamp
    environment: str
    def __init__(self, id: _Optional[str] = ..., store: _Optional[_Union[Store, str]] = ..., product_id: _Optional[str] = ..., transaction_id: _Optional[str] = ..., credits: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purchase_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[int] = ..., state: _Optional[_Union[PurchaseState, str]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., environment: _Optional[str] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("id", "credits")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    credits: int
    def __init__(self, id: _Optional[str] = ..., credits: _Optional[int] = ...) -> None: ...

class RecordPurchaseRequest(_message.Message):
    __slots__ = ("store", "product_id", "transaction_id", "purchase_time", "signed_transaction", "purchase_token")
    STORE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_TIME_FIELD_NUMBER: _ClassVar[int]
    SIGNED_TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    store: Store
    product_id: str
    transaction_id: str
    purchase_time: _timestamp_pb2.Timestamp
    signed_transaction: str
    purchase_token: str
    def __init__(self, store: _Optional[_Union[Store, str]] = ..., product_id: _Optional[str] = ..., transaction_id: _Optional[str] = ..., purchase_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., signed_transaction: _Optional[str] = ..., purchase_token: _Optional[str] = ...) -> None: ...

class RecordPurchaseResponse(_message.Message):
    __slots__ = ("purchase", "balance")
    PURCHASE_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    purchase: Purchase
    balance: int
    def __init__(self, purchase: _Optional[_Union[Purchase, _Mapping]] = ..., balance: _Optional[int] = ...) -> None: ...

class ListPurchasesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPurchasesResponse(_message.Message):
    __slots__ = ("purchases", "next_page_token")
    PURCHASES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    purchases: _containers.RepeatedCompositeFieldContainer[Purchase]
    next_page_token: str
    def __init__(self, purchases: _Optional[_Iterable[_Union[Purchase, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("credits", "free_trial_granted", "free_trial_credits", "store_account_token")
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    FREE_TRIAL_GRANTED_FIELD_NUMBER: _ClassVar[int]
    FREE_TRIAL_CREDITS_FIELD_NUMBER: _ClassVar[int]
    STORE_ACCOUNT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    credits: int
    free_trial_granted: bool
    free_trial_credits: int
    store_account_token: str
    def __init__(self, credits: _Optional[int] = ..., free_trial_granted: _Optional[bool] = ..., free_trial_credits: _Optional[int] = ..., store_account_token: _Optional[str] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ...) -> None: ...
