"""Time per study through the governed scorer, split into decode, preprocess and inference.

Two studies: one 2500x2500 16-bit chest radiograph and a 300-slice 512x512 head CT, both written
as DICOM files and scored through `OnnxStudyScorer` exactly as the gateway does (registry alias,
SHA-256 check, routing-free series selection, contract preprocessing, onnxruntime). The split is
measured separately on the same files: decode (read + pixel data), preprocess (Modality LUT,
window, resize, slice ordering) and inference. The reference is bare onnxruntime on the very
tensors the pipeline produced, in the same run, alternating with the pipeline runs; the ratio
total / bare inference (best of N each, and the median of the paired ratios) is the cost of
everything around the model (target for CT: at most 1.5).

The models are stand-ins with realistic compute, not the tiny demo graphs (whose inference takes
microseconds and would make any ratio meaningless): a plain CNN with fixed random weights, about
7.3 GFLOP per 512x512 radiograph and 1.8 GFLOP per 256x256 CT slice (DenseNet-121 at 224x224 is
about 5.7 GFLOP); the figure printed is the model's total for the study.

    .venv/bin/python -m bench.scoring [--repeat 3] [--slices 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

import scoring  # noqa: F401  (telemetry off before MLflow and onnxruntime load)
from scoring.contract import InputContract
from scoring.ct import read_headers, select_series
from scoring.ct_phantoms import make_ct_series
from scoring.phantoms import write_cxr_file
from scoring.preprocess import dataset_to_tensor
from scoring.registry import ModelRegistry
from scoring.runner import OnnxStudyScorer


def strided_cnn(
    input_name: str, size: int, widths: Sequence[int], batch: str | int
) -> tuple[bytes, float]:
    """Per stage Conv(3x3, stride 2)+Relu then Conv(3x3)+Relu; global average pool, linear,
    sigmoid; fixed random weights. Returns the ONNX bytes and GFLOP per image (2 x MACs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    previous, channels, side, macs = input_name, 1, size, 0.0
    for i, width in enumerate(widths):
        for j, stride in enumerate((2, 1)):
            name = f"{i}_{j}"
            weight = rng.normal(0, (2 / (9 * channels)) ** 0.5, (width, channels, 3, 3))
            inits.append(numpy_helper.from_array(weight.astype(np.float32), f"w{name}"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [previous, f"w{name}"],
                    [f"c{name}"],
                    strides=[stride, stride],
                    pads=[1, 1, 1, 1],
                )
            )
            nodes.append(helper.make_node("Relu", [f"c{name}"], [f"r{name}"]))
            side = (side + stride - 1) // stride
            macs += side * side * width * channels * 9
            previous, channels = f"r{name}", width
    fc = rng.normal(0, 0.01, (1, channels)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    inits.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "fcb"))
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logit"], transB=1),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bench_cnn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 1, size, size])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch, 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    data: bytes = model.SerializeToString(deterministic=True)
    return data, 2 * macs / 1e9


def _timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _best(run: Callable[[], object], repeat: int) -> float:
    """Best of `repeat` runs: other load on the machine only ever adds time."""
    return min(_timed(run) for _ in range(repeat))


def _session(onnx_bytes: bytes, threads: int) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def bench_case(
    label: str,
    paths: list[str],
    contract: InputContract,
    model: tuple[bytes, float],
    root: Path,
    repeat: int,
    threads: int,
) -> None:
    """Score one study through the registry-backed scorer and print the split and the ratio."""
    from pydicom import dcmread

    onnx_bytes, gflop = model
    registry = ModelRegistry(f"sqlite:///{root}/mlflow-{label}.db")
    model_file = root / f"{label}.onnx"
    model_file.write_bytes(onnx_bytes)
    version = registry.register_onnx(label, model_file, contract, {"auroc": 0.5}, "bench")
    registry.set_alias(label, "production", version)
    scorer = OnnxStudyScorer(registry, label, refresh_seconds=3600, intra_op_threads=threads)
    scorer.score(paths)  # warm-up: session creation and the first resolve are not per study

    ordered = paths
    if contract.aggregation != "none":
        choice = select_series(read_headers(paths))
        assert choice is not None
        ordered = list(choice.paths)
    datasets: list[object] = []

    def decode() -> None:
        datasets.clear()
        for p in ordered if contract.aggregation != "none" else paths[:1]:
            ds = dcmread(p)
            _ = ds.pixel_array
            datasets.append(ds)

    def preprocess() -> None:
        if contract.aggregation != "none":
            select_series(read_headers(paths))
        for ds in datasets:
            dataset_to_tensor(ds, contract)  # type: ignore[arg-type]

    decode_s = _best(decode, repeat)
    preprocess_s = _best(preprocess, repeat)
    tensor = np.concatenate([dataset_to_tensor(ds, contract) for ds in datasets])  # type: ignore[arg-type]
    session = _session(onnx_bytes, threads)
    feed = {contract.input_name: tensor}
    # Pipeline and bare runs alternate, so a burst of load elsewhere hits both alike.
    totals, bares = [], []
    for _ in range(repeat):
        totals.append(_timed(lambda: scorer.score(paths)))
        bares.append(_timed(lambda: session.run(None, feed)))  # type: ignore[attr-defined]
    total_s, inference_s = min(totals), min(bares)
    ratios = statistics.median(t / b for t, b in zip(totals, bares, strict=True))
    overhead = total_s - decode_s - preprocess_s - inference_s
    print(
        f"{label:>28}: total {total_s * 1000:8.1f} ms = decode {decode_s * 1000:7.1f} + "
        f"preprocess {preprocess_s * 1000:7.1f} + inference {inference_s * 1000:7.1f} + "
        f"other {overhead * 1000:6.1f}; bare onnxruntime {inference_s * 1000:7.1f} ms; "
        f"ratio {total_s / inference_s:5.2f} (median of paired runs {ratios:5.2f}; "
        f"model {gflop * len(datasets):.1f} GFLOP)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Write the two studies, build the stand-in models and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else "")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cxr = write_cxr_file(
            root / "cxr.dcm", True, seed=1, patient_id="B", patient_name="B", accession="B",
            rows=2500, bits_stored=16,
        )  # fmt: skip
        ct_dir = root / "ct"
        ct_dir.mkdir()
        ct_paths = []
        for i, ds in enumerate(
            make_ct_series(
                True, seed=2, patient_id="B", accession="B", slices=args.slices, size=512
            )
        ):
            path = ct_dir / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            ct_paths.append(str(path))
        print(
            f"CXR 2500x2500 16-bit ({cxr.stat().st_size >> 20} MiB); CT {args.slices} x 512x512; "
            f"onnxruntime threads {args.threads}; best of {args.repeat}"
        )
        cxr_contract = InputContract("bench-cxr", "image", 512, 512, "finding")
        ct_contract = InputContract(
            "bench-ct", "slices", 256, 256, "finding", window_center=40.0, window_width=80.0,
            aggregation="max",
        )  # fmt: skip
        bench_case(
            "cxr-2500px-cnn",
            [str(cxr)],
            cxr_contract,
            strided_cnn("image", 512, (32, 64, 128, 256, 256), 1),
            root,
            args.repeat,
            args.threads,
        )
        bench_case(
            f"ct-{args.slices}-slices-cnn",
            ct_paths,
            ct_contract,
            strided_cnn("slices", 256, (32, 64, 128, 256, 256), "slices"),
            root,
            args.repeat,
            args.threads,
        )


if __name__ == "__main__":
    main()
