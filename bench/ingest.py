"""Ingest throughput: the gateway against dcmtk `storescp` and Orthanc, on the same files.

Data (generated once into the work directory): "CT", one study of 300 slices of 512x512 16-bit
(0.53 MB each); "CXR", 20 chest X-rays of 2500x2500 16-bit (12.5 MB each); "1 GB", one study of
80 such X-rays, received by the gateway only, for its peak memory (once as configured by default,
where inference children start only when a study is scored, and once with them started).
Senders: dcmtk `storescu` with TCP no-delay, with 1 and with 4 concurrent associations; STOW-RS
as plain multipart POSTs (20 instances per request for CT, 1 for CXR) into the gateway and
Orthanc's DICOMweb plugin.
Orthanc keeps its default durability (fsync of every file), as the gateway does; storescp does
not fsync. Each row prints instances/s, MB/s, receiver CPU seconds, CPU s per GB, peak memory
(summed RSS of the receiver's process tree, RSS of the receiving process, and summed PSS of the
tree, which counts pages shared between its processes once) and the gateway's ratios to Orthanc
and storescp measured in the same run.

    .venv/bin/python -m bench.ingest [--workdir DIR] [--repeat N] [--only CT,CXR,1GB,STOW]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from bench.ingest_receivers import (
    GatewayReceiver,
    OrthancReceiver,
    Receiver,
    StorescpReceiver,
    TreeMeter,
)

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
BOUNDARY = "bench-boundary-7d1c"


@dataclass(frozen=True)
class Row:
    """One measured run."""

    data: str
    transport: str
    receiver: str
    instances: int
    megabytes: float
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    peak_own_rss_mb: float
    peak_pss_mb: float = 0.0

    @property
    def per_second(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        """Megabytes per second."""
        return self.megabytes / self.seconds

    @property
    def cpu_per_gb(self) -> float:
        """Receiver CPU seconds per GB received."""
        return self.cpu_seconds / (self.megabytes / 1024)


def _write(
    path: Path, study: str, series: str, n: int, sop_class: str, pixels: bytes, size: int
) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "CT" if sop_class == CT_CLASS else "DX"
    ds.PatientID, ds.PatientName, ds.AccessionNumber = "BENCH1", "Bench^Patient", "ACC-BENCH"
    ds.StudyDate, ds.InstanceNumber = "20300101", n + 1
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)


def generate(workdir: Path, name: str, count: int, size: int, sop_class: str) -> list[Path]:
    """A study of `count` instances of size x size 16-bit pixels (kept between runs)."""
    directory = workdir / "data" / name
    files = sorted(directory.glob("*.dcm"))
    if len(files) == count:
        return files
    directory.mkdir(parents=True, exist_ok=True)
    for old in files:
        old.unlink()
    rng = np.random.default_rng(1)
    study, series = generate_uid(), generate_uid()
    pixels = (rng.integers(0, 4096, size * size, dtype=np.uint16)).tobytes()
    for n in range(count):
        _write(directory / f"{n:04d}.dcm", study, series, n, sop_class, pixels, size)
    return sorted(directory.glob("*.dcm"))


def _chunks(files: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(files[i::parts]) for i in range(parts) if files[i::parts]]


def cstore(receiver: Receiver, files: Sequence[Path], associations: int) -> float:
    """Send with `associations` concurrent storescu processes; returns the wall time."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                "BENCH",
                "-aec",
                receiver.ae_title,
                "127.0.0.1",
                str(receiver.dicom_port),
                *map(str, chunk),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in _chunks(files, associations)
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=600)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - started


def _multipart(files: Sequence[Path]) -> tuple[int, Iterator[bytes]]:
    heads = [f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in files]
    tail = f"--{BOUNDARY}--\r\n".encode()
    length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, files, strict=True))

    def body() -> Iterator[bytes]:
        for head, path in zip(heads, files, strict=True):
            yield head
            with path.open("rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    yield chunk
            yield b"\r\n"
        yield tail

    return length + len(tail), body()


def stow(port: int, path: str, token: str, files: Sequence[Path], per_request: int) -> float:
    """POST the files in batches over one connection; returns the wall time."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    for start in range(0, len(files), per_request):
        length, body = _multipart(files[start : start + per_request])
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read()
        if response.status != 200:
            raise RuntimeError(f"STOW-RS answered {response.status}: {text[:500]!r}")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def read_through(files: Sequence[Path]) -> None:
    """Read the files once, so that the sender finds them in the page cache.

    The receivers' writes (the 1 GB study above all) push the data of other rows out of the
    cache; a round that found its files there and one that read them from the disk measured the
    sender's disk, not the receiver (a row's first round once ran at a fifth of the others').
    """
    for path in files:
        with path.open("rb") as fh:
            while fh.read(1 << 20):
                pass


def measure(
    receiver: Receiver, data: str, transport: str, files: Sequence[Path], associations: int
) -> Row:
    """One run on a freshly started receiver."""
    read_through(files)
    receiver.start(associations)
    try:
        with TreeMeter(receiver.pid()) as meter:
            if transport.startswith("STOW"):
                per_request = 20 if data == "CT" else 1
                if isinstance(receiver, GatewayReceiver):
                    seconds = stow(receiver.http_port, "/dicomweb/studies", receiver.token,
                                   files, per_request)  # fmt: skip
                else:
                    assert isinstance(receiver, OrthancReceiver)
                    seconds = stow(receiver.http_port, "/dicom-web/studies", "", files, per_request)
            else:
                seconds = cstore(receiver, files, associations)
        stored = receiver.stored(len(files))
        if stored != len(files):
            raise RuntimeError(f"{receiver.name} holds {stored} of {len(files)} instances")
    finally:
        receiver.stop()
    return Row(
        data,
        transport,
        receiver.name,
        len(files),
        sum(p.stat().st_size for p in files) / 2**20,
        seconds,
        meter.cpu_seconds,
        meter.peak_rss / 2**20,
        meter.peak_own_rss / 2**20,
        meter.peak_pss / 2**20,
    )


def _median(rows: list[Row]) -> Row:
    pick = sorted(rows, key=lambda r: r.seconds)[len(rows) // 2]
    cpu = statistics.median(r.cpu_seconds for r in rows)
    rss = max(r.peak_rss_mb for r in rows)
    own = max(r.peak_own_rss_mb for r in rows)
    pss = max(r.peak_pss_mb for r in rows)
    return Row(pick.data, pick.transport, pick.receiver, pick.instances, pick.megabytes,
               pick.seconds, cpu, rss, own, pss)  # fmt: skip


def paired_ratios(runs: Sequence[Row], references: Sequence[Row]) -> list[float]:
    """The gateway's rate over a reference's, round by round (the two ran one after the other).

    Less sensitive to the machine's drift over minutes than the ratio of the two medians.
    """
    return [r.per_second / ref.per_second for r, ref in zip(runs, references, strict=True)]


def _groups(
    plan: list[tuple[Receiver, str, str, int]],
) -> list[list[tuple[Receiver, str, str, int]]]:
    """The plan's steps by row (data, transport, and the memory-run receiver of its own)."""
    groups: dict[tuple[str, str, int], list[tuple[Receiver, str, str, int]]] = {}
    for step in plan:
        receiver, name, transport, _ = step
        groups.setdefault((name, transport, id(receiver) if name == "1 GB" else 0), []).append(step)
    return list(groups.values())


def spread(ratios: Sequence[float]) -> str:
    """Round-by-round ratios as "lowest-highest (median)"."""
    if not ratios:
        return ""
    return f"{min(ratios):.2f}-{max(ratios):.2f} ({statistics.median(ratios):.2f})"


def table(
    rows: list[Row], by_round: Mapping[tuple[str, str, str], Sequence[float]] | None = None
) -> str:
    """The results with the gateway's ratios to the references of the same data and transport.

    `by_round` holds the gateway's round-by-round ratios by (data, transport, reference).
    """
    by_key = {(r.data, r.transport, r.receiver): r for r in rows}
    by_round = by_round or {}
    lines = [
        "| data | transport | receiver | inst/s | MB/s | CPU s | CPU s/GB | peak RSS MB "
        "| of which receiving process | peak PSS MB "
        "| x Orthanc | x Orthanc, PostgreSQL index | x storescp "
        "| x Orthanc by round | x Orthanc, PostgreSQL index, by round |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        ratios = []
        for ref in ("orthanc", "orthanc-postgresql", "storescp"):
            other = by_key.get((r.data, r.transport, ref))
            ok = r.receiver == "gateway" and other is not None
            ratios.append(f"{r.per_second / other.per_second:.2f}" if ok and other else "")
        rounds = [
            spread(by_round.get((r.data, r.transport, ref), [])) if r.receiver == "gateway" else ""
            for ref in ("orthanc", "orthanc-postgresql")
        ]
        lines.append(
            f"| {r.data} | {r.transport} | {r.receiver} | {r.per_second:.1f} | "
            f"{r.mb_per_second:.0f} | {r.cpu_seconds:.2f} | {r.cpu_per_gb:.1f} | "
            f"{r.peak_rss_mb:.0f} | {r.peak_own_rss_mb:.0f} | {r.peak_pss_mb:.0f} | "
            f"{ratios[0]} | {ratios[1]} | {ratios[2]} | {rounds[0]} | {rounds[1]} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("var/bench-ingest"))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="CT,CXR,STOW,1GB")
    parser.add_argument("--receivers", default="gateway,storescp,orthanc")
    parser.add_argument(
        "--postgres",
        default="",
        help="admin URL: the gateway uses PostgreSQL instead of SQLite, and the receiver "
        "orthanc-postgresql (Orthanc's PostgreSQL index plugin) can be named",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    work = args.workdir.resolve()
    data = {
        "CT": generate(work, "ct", 300, 512, CT_CLASS),
        "CXR": generate(work, "cxr", 20, 2500, DX_CLASS),
    }
    candidates: list[Receiver] = [
        GatewayReceiver(work, args.postgres),
        StorescpReceiver(work),
        OrthancReceiver(work),
    ]
    if args.postgres:
        candidates.append(OrthancReceiver(work, args.postgres))
    receivers = [r for r in candidates if r.name in args.receivers.split(",")]
    plan: list[tuple[Receiver, str, str, int]] = []
    for name in ("CT", "CXR"):
        if name not in wanted:
            continue
        for associations in (1, 4):
            plan += [(rc, name, f"C-STORE x{associations}", associations) for rc in receivers]
    if "STOW" in wanted:
        for name in ("CT", "CXR"):
            plan += [(rc, name, "STOW-RS", 1) for rc in receivers if rc.name != "storescp"]
    if "1GB" in wanted:
        data["1 GB"] = generate(work, "xl", 80, 2500, DX_CLASS)
        plan += [(r, "1 GB", "C-STORE x1", 1) for r in receivers if r.name == "gateway"]
        if any(r.name == "gateway" for r in receivers):
            # Inference children start when a study needs one; this run starts them with the
            # gateway (idle, no model loaded yet), for the tree's memory with them running.
            warm = GatewayReceiver(
                work,
                args.postgres,
                name="gateway, inference children started",
                extra_env={"HITL_GATEWAY_SCORING__WORKER_IDLE_SECONDS": "0"},
            )
            plan += [(warm, "1 GB", "C-STORE x1", 1)]
    rows = []
    by_round: dict[tuple[str, str, str], list[float]] = {}
    for group in _groups(plan):
        # The receivers of one row take turns, round after round: this machine's speed drifts
        # over minutes, and back-to-back runs of one receiver would carry the drift into ratios.
        runs: dict[str, list[Row]] = {receiver.name: [] for receiver, *_ in group}
        for _ in range(args.repeat):
            for receiver, name, transport, associations in group:
                run = measure(receiver, name, transport, data[name], associations)
                runs[receiver.name].append(run)
        for (receiver, name, transport, _), done in zip(group, runs.values(), strict=True):
            rows.append(_median(done))
            rates = " ".join(f"{r.per_second:.1f}" for r in done)
            print(f"# {name} {transport} {receiver.name}: {rows[-1].per_second:.1f} inst/s "
                  f"(rounds: {rates})", flush=True)  # fmt: skip
        for reference in ("orthanc", "orthanc-postgresql"):
            if "gateway" in runs and reference in runs:
                paired = paired_ratios(runs["gateway"], runs[reference])
                by_round[(name, transport, reference)] = paired
                listed = " ".join(f"{q:.2f}" for q in paired)
                print(f"# {name} {transport} gateway / {reference}, round by round: {listed} "
                      f"(median {statistics.median(paired):.2f})", flush=True)  # fmt: skip
    print(table(rows, by_round))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
