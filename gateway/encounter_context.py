"""Required context: a study whose DICOM header lacks the encounter gets it from the EHR.

The look-up is by accession number (the order the study fulfils) through the `EncounterLookup`
Protocol; the FHIR ServiceRequest adapter implements it. A failed or empty look-up leaves the
study as it is: its review Task then shows no encounter and no downstream action is allowed,
which is the design's rule for missing context.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from gateway.domain.errors import GatewayError
from gateway.domain.model import StudyContext
from gateway.ports import EncounterLookup

log = logging.getLogger(__name__)


async def with_encounter(study: StudyContext, lookup: EncounterLookup | None) -> StudyContext:
    """The study with its encounter from the EHR when the header had none and one is found."""
    if lookup is None or study.encounter_id or not study.accession_number:
        return study
    try:
        encounter = await lookup.encounter_for_accession(study.accession_number)
    except GatewayError as exc:
        log.warning(
            "encounter look-up for accession %s failed: %s", study.accession_number, exc.message
        )
        return study
    if not encounter:
        log.warning("the EHR knows no encounter for accession %s", study.accession_number)
        return study
    return replace(study, encounter_id=encounter)
