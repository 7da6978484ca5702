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

class OrderState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATE_UNSPECIFIED: _ClassVar[OrderState]
    ORDER_STATE_QUEUED: _ClassVar[OrderState]
    ORDER_STATE_RUNNING: _ClassVar[OrderState]
    ORDER_STATE_COMPLETED: _ClassVar[OrderState]
    ORDER_STATE_FAILED: _ClassVar[OrderState]
    ORDER_STATE_CANCELLED: _ClassVar[OrderState]

class GeneratedPhotoState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENERATED_PHOTO_STATE_UNSPECIFIED: _ClassVar[GeneratedPhotoState]
    GENERATED_PHOTO_STATE_AVAILABLE: _ClassVar[GeneratedPhotoState]
    GENERATED_PHOTO_STATE_DOWNLOADED: _ClassVar[GeneratedPhotoState]
    GENERATED_PHOTO_STATE_REJECTED: _ClassVar[GeneratedPhotoState]
ORDER_STATE_UNSPECIFIED: OrderState
ORDER_STATE_QUEUED: OrderState
ORDER_STATE_RUNNING: OrderState
ORDER_STATE_COMPLETED: OrderState
ORDER_STATE_FAILED: OrderState
ORDER_STATE_CANCELLED: OrderState
GENERATED_PHOTO_STATE_UNSPECIFIED: GeneratedPhotoState
GENERATED_PHOTO_STATE_AVAILABLE: GeneratedPhotoState
GENERATED_PHOTO_STATE_DOWNLOADED: GeneratedPhotoState
GENERATED_PHOTO_STATE_REJECTED: GeneratedPhotoState

class Style(_message.Message):
    __slots__ = ("id", "display_name", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    description: str
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "model_ids", "style_id", "count", "state", "images_total", "images_done", "images_failed", "credits_charged", "credits_refunded", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    STYLE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FAILED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_CHARGED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    style_id: str
    count: int
    state: OrderState
    images_total: int
    images_done: int
    images_failed: int
    credits_charged: int
    credits_refunded: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model_ids: _Optional[_Iterable[str]] = ..., style_id: _Optional[str] = ..., count: _Optional[int] = ..., state: _Optional[_Union[OrderState, str]] = ..., images_total: _Optional[int] = ..., images_done: _Optional[int] = ..., images_failed: _Optional[int] = ..., credits_charged: _Optional[int] = ..., credits_refunded: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GeneratedPhoto(_message.Message):
    __slots__ = ("id", "order_id", "model_id", "state", "width", "height", "create_time", "download_time", "reject_time", "purge_after")
    ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    REJECT_TIME_FIELD_NUMBER: _ClassVar[int]
    PURGE_AFTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    order_id: str
    model_id: str
    state: GeneratedPhotoState
    width: int
    height: int
    create_time: _timestamp_pb2.Timestamp
    download_time: _timestamp_pb2.Timestamp
    reject_time: _timestamp_pb2.Timestamp
    purge_after: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., order_id: _Optional[str] = ..., model_id: _Optional[str] = ..., state: _Optional[_Union[GeneratedPhotoState, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., download_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reject_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purge_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListStylesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStylesResponse(_message.Message):
    __slots__ = ("styles",)
    STYLES_FIELD_NUMBER: _ClassVar[int]
    styles: _containers.RepeatedCompositeFieldContainer[Style]
    def __init__(self, styles: _Optional[_Iterable[_Union[Style, _Mapping]]] = ...) -> None: ...

class CreateOrderRequest(_message.Message):
    __slots__ = ("model_ids", "style_id", "count", "request_id")
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    STYLE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    style_id: str
    count: int
    request_id: str
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ..., style_id: _Optional[str] = ..., count: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "next_page_token")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    next_page_token: str
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchOrderRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ListGeneratedPhotosRequest(_message.Message):
    __slots__ = ("order_id", "state", "page_size", "page_token")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    state: GeneratedPhotoState
    page_size: int
    page_token: str
    def __init__(self, order_id: _Optional[str] = ..., state: _Optional[_Union[GeneratedPhotoState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListGeneratedPhotosResponse(_message.Message):
    __slots__ = ("generated_photos", "next_page_token")
    GENERATED_PHOTOS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    generated_photos: _containers.RepeatedCompositeFieldContainer[GeneratedPhoto]
    next_page_token: str
    def __init__(self, generated_photos: _Optional[_Iterable[_Union[GeneratedPhoto, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetGeneratedPhotoPreviewRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetGeneratedPhotoPreviewResponse(_message.Message):
    __slots__ = ("jpeg", "width", "height")
    JPEG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    jpeg: bytes
    width: int
    height: int
    def __init__(self, jpeg: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class DownloadGeneratedPhotoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DownloadGeneratedPhotoResponse(_message.Message):
    __slots__ = ("data", "content_type", "total_size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    content_type: str
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class RejectGeneratedPhotoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RejectGeneratedPhotoResponse(_message.Message):
    __slots__ = ("generated_photo",)
    GENERATED_PHOTO_FIELD_NUMBER: _ClassVar[int]
    generated_photo: GeneratedPhoto
    def __init__(self, generated_photo: _Optional[_Union[GeneratedPhoto, _Mapping]] = ...) -> None: ...

class DeleteGeneratedPhotoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteGeneratedPhotoResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
