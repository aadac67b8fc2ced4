"""INT8 post-training quantization of YOLO models through the two routes Ultralytics users already have.

- ONNX Runtime: static QDQ quantization of an exported ONNX file, calibrated on training-split images prepared with
  Ultralytics' letterbox, as the exported model receives them.
- OpenVINO: Ultralytics' own `export(format="openvino", quantize=8)`, which quantizes with NNCF on the split given.

Both write files that plain Ultralytics loads and validates (`YOLO("model.onnx").val(...)`).
"""

from __future__ import annotations

import os
import tempfile
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.data.augment import LetterBox
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

from ds2d2_yolo.tools.export import export_to

INSTALL_HINT = 'pip install -e ".[compress]"'
# Activations that follow a convolution inside Ultralytics' Conv blocks (SiLU = Sigmoid * x).
ACTIVATION_OPS = ("Sigmoid", "Mul", "Relu", "HardSigmoid", "HardSwish", "LeakyRelu")


def require_ort_quantization() -> types.ModuleType:
    """Import `onnxruntime.quantization`, or fail in one line with the install command."""
    try:  # optional: pip install -e .[compress]
        import onnx  # noqa: F401  (quantize_static reads and writes ONNX protos)
        import onnxruntime.quantization as ortq
    except ImportError:
        raise ImportError(f"INT8 via ONNX Runtime needs onnx and onnxruntime: {INSTALL_HINT}") from None
    return ortq


def openvino_available() -> bool:
    """Whether OpenVINO and NNCF (needed by Ultralytics' OpenVINO INT8 export) can be imported."""
    try:  # optional: pip install -e .[compress]
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def export_openvino_int8(weights: str | Path, out: Path, data: str | Path, **kw: Any) -> Path:
    """Ultralytics' OpenVINO INT8 export (NNCF) of `weights` into `out`, calibrated on the training split of `data`.

    Ultralytics calibrates on the val split unless told otherwise, which are the images the INT8 model is then
    validated on.

    Args:
        weights (str | Path): Ultralytics .pt file.
        out (Path): Where the OpenVINO folder goes (see `export_to`).
        data (str | Path): Dataset yaml.
        **kw (Any): Further Ultralytics export arguments (imgsz, batch, device).

    Returns:
        (Path): The OpenVINO model folder.
    """
    return export_to(weights, "openvino", out, quantize=8, data=str(data), split="train", **kw)


def split_images(data: str | Path, split: str = "train", limit: int | None = None) -> list[Path]:
    """Image files of one split of a dataset yaml, sorted (a folder, a list file, or a list of either).

    Args:
        data (str | Path): Dataset yaml.
        split (str): "train", "val" or "test".
        limit (int | None): Keep at most this many, spread evenly over the split.

    Returns:
        (list[Path]): The images.

    Raises:
        FileNotFoundError: When the split has no images.
    """
    d = check_det_dataset(str(data), autodownload=False)
    if not d.get(split):
        raise FileNotFoundError(f"data={data} has no '{split}' split")
    files: list[Path] = []
    for p in d[split] if isinstance(d[split], list) else [d[split]]:
        p = Path(p)
        if p.is_dir():
            files += [f for f in p.rglob("*.*") if f.suffix[1:].lower() in IMG_FORMATS]
        elif p.is_file():
            lines = p.read_text(encoding="utf-8-sig").split()
            files += [Path(x.replace("./", f"{p.parent}{os.sep}", 1) if x.startswith("./") else x) for x in lines]
    files = sorted(set(files))
    if not files:
        raise FileNotFoundError(f"no images in the '{split}' split of data={data}")
    if limit and len(files) > limit:
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def letterbox_tensor(path: str | Path, imgsz: int, stride: int = 32) -> np.ndarray:
    """Read an image and prepare it as Ultralytics prepares input for a fixed-size exported model.

    Returns:
        (np.ndarray): Float32 array (1, 3, imgsz, imgsz), RGB, scaled to [0, 1].
    """
    im = cv2.imread(str(path))
    if im is None:
        raise FileNotFoundError(f"cannot read image '{path}'")
    im = LetterBox((imgsz, imgsz), auto=False, stride=stride)(image=im)
    return np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def calibration_reader(
    files: list[Path], imgsz: int, input_name: str, progress: Callable[[Iterable], Iterable] | None = None
) -> Any:
    """An ONNX Runtime CalibrationDataReader over letterboxed images.

    Args:
        files (list[Path]): Calibration images.
        imgsz (int): Square input size of the exported model.
        input_name (str): Name of the model input.
        progress (Callable | None): Wraps the image iterator (a progress bar), if given.

    Returns:
        (CalibrationDataReader): Yields {input_name: (1, 3, imgsz, imgsz) float32}.
    """
    ortq = require_ort_quantization()

    class LetterboxReader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(progress(files) if progress else files)

        def get_next(self) -> dict[str, np.ndarray] | None:
            f = next(self.it, None)
            return None if f is None else {input_name: letterbox_tensor(f, imgsz)}

    return LetterboxReader()


def last_layer(model: Any) -> int:
    """Index of the last layer of an Ultralytics ONNX export (the head): its nodes are named `/model.<i>/...`."""
    return max(int(n.name.split("/")[1].split(".")[1]) for n in model.graph.node if n.name.startswith("/model."))


def float_head_nodes(model: Any, head_index: int) -> list[str]:
    """ONNX nodes of the head (`/model.<head_index>/...`) that stay in float: decoding and the output convolutions.

    Decoding concatenates pixel coordinates with probabilities, which one INT8 scale cannot hold; the output
    convolutions (boxes, classes, angles, DFL) are small and their values are read directly. The head's inner
    convolutions and their activations, where its cost is, are quantized: a float activation between quantized
    convolutions would cost a dequantize, an unfused sigmoid and multiply, and a quantize.
    """
    prefix = f"/model.{head_index}/"
    made_by = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)

    def inner_conv(n: Any) -> bool:
        return n.op_type == "Conv" and any(c in (*ACTIVATION_OPS, "Conv") for c in consumers.get(n.output[0], []))

    def inner_activation(n: Any) -> bool:
        # SiLU is Sigmoid(x) then Mul(x, Sigmoid(x)): walk back through the Sigmoid to the convolution.
        if n.op_type not in ACTIVATION_OPS:
            return False
        src = [made_by.get(i) for i in n.input]
        src += [made_by.get(j) for s in src if s is not None and s.op_type in ACTIVATION_OPS for j in s.input]
        return any(s is not None and inner_conv(s) for s in src)

    return [
        n.name for n in model.graph.node if n.name.startswith(prefix) and not (inner_conv(n) or inner_activation(n))
    ]


def stem_nodes(model: Any) -> list[str]:
    """ONNX nodes of the first layer (`/model.0/...`), the convolution on the image and its activation.

    With three input channels ONNX Runtime's quantized convolution is slower than its float one (about 1 ms of a
    50 %-pruned yolov8n-obb at 640 px; `benchmarks/int8_latency.py --ort-variants`), and in float the image needs no
    quantize step.
    """
    return [n.name for n in model.graph.node if n.name.startswith("/model.0/")]


def widen_narrow_convs(model: Any, width: int = 16, exclude: Iterable[str] = ()) -> list[str]:
    """Give convolutions with fewer than `width` filters zero filters up to `width`, in place, keeping the function.

    ONNX Runtime's fast INT8 convolution (its symmetric-weight kernels, VNNI included) needs at least 16 output
    channels; narrower ones fall back to a slower general path. A 50 %-pruned yolov8n keeps 8 channels in places,
    at up to 160x160 px. A zero filter with zero bias gives zero, and SiLU(0) = 0. Where the output reaches only
    other convolutions' data inputs, directly or through a SiLU (Sigmoid then Mul), their weights for the new
    channels are zero; anywhere else (a residual Add, a Concat) a Slice right after the convolution takes the
    original channels back. Either way the outputs are those of the original graph, and in INT8 the quantization
    of the original channels does not change.

    Args:
        model (onnx.ModelProto): FP32 graph, changed in place (its stale shape annotations are dropped).
        width (int): Filters a widened convolution gets.
        exclude (Iterable[str]): Names of nodes left as they are (those that stay in float).

    Returns:
        (list[str]): Names of the widened convolutions.
    """
    from onnx import helper, numpy_helper  # optional: present once require_ort_quantization passed

    skip = set(exclude)
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def plain_conv(n: Any) -> bool:
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        return n.op_type == "Conv" and group == 1 and all(i in init for i in n.input[1:])

    def own(names: Iterable[str]) -> bool:  # a weight shared with another node would change that node too
        return all(len(consumers.get(i, [])) == 1 for i in names)

    def conv_users(n: Any) -> list[Any] | None:
        out, users = n.output[0], consumers.get(n.output[0], [])
        sig = [u for u in users if u.op_type == "Sigmoid"]
        if len(users) == 2 and len(sig) == 1:  # SiLU: Mul(x, Sigmoid(x))
            mul = next((u for u in users if u.op_type == "Mul" and sig[0].output[0] in u.input), None)
            if mul is None or len(consumers.get(sig[0].output[0], [])) != 1:
                return None
            out, users = mul.output[0], consumers.get(mul.output[0], [])
        ok = all(plain_conv(u) and list(u.input).count(out) == 1 and u.input[0] == out for u in users)
        return users if users and ok and own(u.input[1] for u in users) else None

    def put(name: str, array: np.ndarray) -> None:
        init[name].CopyFrom(numpy_helper.from_array(array, name))

    widened = []
    for n in list(graph.node):
        if n.name in skip or not plain_conv(n) or not own(n.input[1:]):
            continue
        w = numpy_helper.to_array(init[n.input[1]])
        c, k = w.shape[0], width - w.shape[0]
        if k <= 0:
            continue
        put(n.input[1], np.concatenate([w, np.zeros((k, *w.shape[1:]), w.dtype)]))
        if len(n.input) > 2:
            b = numpy_helper.to_array(init[n.input[2]])
            put(n.input[2], np.concatenate([b, np.zeros(k, b.dtype)]))
        users = conv_users(n)
        if users is not None:
            for u in users:
                wu = numpy_helper.to_array(init[u.input[1]])
                put(u.input[1], np.concatenate([wu, np.zeros((wu.shape[0], k, *wu.shape[2:]), wu.dtype)], 1))
        else:
            out = n.output[0]
            n.output[0] = f"{out}_widened"
            bounds = [f"{n.name}/narrow_{x}" for x in ("starts", "ends", "axes")]
            for name, v in zip(bounds, (0, c, 1)):
                graph.initializer.append(numpy_helper.from_array(np.array([v], np.int64), name))
            at = list(graph.node).index(n) + 1
            graph.node.insert(at, helper.make_node("Slice", [n.output[0], *bounds], [out], name=f"{n.name}/narrow"))
        widened.append(n.name)
    if widened:
        del graph.value_info[:]
    return widened


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    images: list[Path],
    imgsz: int,
    head_index: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    options: dict[str, Any] | None = None,
    float_stem: bool = True,
    pad_channels: int = 16,
) -> Path:
    """Quantize an FP32 ONNX detector to INT8 (QDQ: u8 activations, per-channel s8 weights), calibrated on `images`.

    Weights use 7 bits (`reduce_range`): x86 CPUs without VNNI multiply u8 by s8 in pairs summed into int16, which
    saturates with full-range weights. On this repository's AVX2 CPU, full-range weights cost yolov8n-obb-dota 0.115
    mAP50 on DOTA tiles at 640 px, 7-bit weights none.

    An activation's range is the mean over the calibration images of each image's minimum and maximum
    (`CalibMovingAverage`), not the extremes of all of them, which one unusual image would set: on the tune split
    this lost 0.004 mAP50 less than the extremes, paired over 20 recovered pruned students (docs/results.md).

    Args:
        src (str | Path): FP32 ONNX file exported by Ultralytics (fixed input size).
        dst (str | Path): INT8 ONNX file to write.
        images (list[Path]): Calibration images (from the training split).
        imgsz (int): The export's square input size.
        head_index (int | None): Index of the Detect layer (see `float_head_nodes`). None: `last_layer`.
        progress (Callable | None): Wraps the calibration image iterator.
        options (dict | None): `onnxruntime.quantization.quantize_static` keywords that replace the defaults above
            (e.g. `{"op_types_to_quantize": ["Conv"]}`), for comparing settings.
        float_stem (bool): Keep the first layer in float (see `stem_nodes`).
        pad_channels (int): Widen quantized convolutions narrower than this with zero filters (see
            `widen_narrow_convs`); 0 leaves them as they are.

    Returns:
        (Path): The INT8 file. Ultralytics metadata (stride, names, task, imgsz) is copied so `YOLO(dst)` works.
    """
    ortq = require_ort_quantization()
    import onnx  # optional: present once require_ort_quantization passed

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    if head_index is None:
        head_index = last_layer(model)
    exclude = float_head_nodes(model, head_index) + (stem_nodes(model) if float_stem else [])
    widened = widen_narrow_convs(model, pad_channels, exclude) if pad_channels else []
    reader = calibration_reader(images, imgsz, model.graph.input[0].name, progress)
    settings = {
        "quant_format": ortq.QuantFormat.QDQ,
        "per_channel": True,
        "reduce_range": True,
        "activation_type": ortq.QuantType.QUInt8,
        "weight_type": ortq.QuantType.QInt8,
        "nodes_to_exclude": exclude,
        "calibrate_method": ortq.CalibrationMethod.MinMax,
        "extra_options": {"CalibMovingAverage": True},
    }
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        fp32 = src
        if widened:
            fp32 = Path(tmp) / src.name
            onnx.save(model, str(fp32))
        ortq.quantize_static(str(fp32), str(dst), reader, **{**settings, **(options or {})})
    out = onnx.load(str(dst))
    meta = {p.key: p.value for p in model.metadata_props}
    del out.metadata_props[:]
    for k, v in {**meta, "int8": "onnxruntime QDQ"}.items():
        out.metadata_props.add(key=k, value=v)
    onnx.save(out, str(dst))
    return dst
