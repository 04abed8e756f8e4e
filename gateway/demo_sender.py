"""`hitl-gateway demo send`: synthetic chest X-ray studies pushed over DICOM C-STORE."""

from __future__ import annotations

import secrets

from pydicom.uid import UID
from pynetdicom import AE

# DX Image Storage - For Presentation (PS3.4 B.5)
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")


def send_demo_studies(
    *, host: str, port: int, called_ae: str, positives: int, negatives: int
) -> list[str]:
    """Send one-instance studies with and without a finding; returns one status line per study."""
    from scoring.phantoms import make_cxr_dataset

    ae = AE(ae_title="HITLDEMO")
    ae.add_requested_context(DX_FOR_PRESENTATION)
    lines: list[str] = []
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return [f"association with {called_ae}@{host}:{port} was not established"]
    try:
        plan = [True] * positives + [False] * negatives
        for n, positive in enumerate(plan):
            seed = secrets.randbelow(2**31)
            ds = make_cxr_dataset(
                positive,
                seed=seed,
                patient_id=f"DEMO{seed % 100000:05d}",
                patient_name=f"Demo^Patient{n + 1}",
                accession=f"ACC{seed % 1000000:06d}",
                encounter_id=f"ENC{seed % 100000:05d}",
            )
            status = assoc.send_c_store(ds, msg_id=n + 1)
            code = int(getattr(status, "Status", -1)) if status else -1
            lines.append(
                f"study {ds.StudyInstanceUID} ({'finding' if positive else 'no finding'}): "
                f"status 0x{code & 0xFFFF:04X} "
            )
    finally:
        assoc.release()
    return lines
