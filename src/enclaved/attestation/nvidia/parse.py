"""Parse NVIDIA GPU evidence: the ``nvidia_payload`` of an attestation report.

The payload is a JSON document (served as a JSON *string* inside the report)::

    {"nonce": "<hex>", "arch": "HOPPER",
     "evidence_list": [{"arch": "HOPPER",
                        "certificate": "<base64 of a PEM certificate chain>",
                        "evidence": "<base64 of an SPDM GET_MEASUREMENTS exchange>"}, ...]}

one ``evidence_list`` entry per GPU. Each ``evidence`` is what the GPU's
driver returns for an attestation report: the SPDM 1.1 ``GET_MEASUREMENTS``
*request* the driver sent (it carries the requester's 32-byte nonce) followed
by the GPU's signed ``MEASUREMENTS`` *response* (DMTF DSP0274 1.1, section
10.11). Layouts, all integers little-endian::

    GET_MEASUREMENTS request (37 bytes)
       0  SPDMVersion          1   0x11 (SPDM 1.1)
       1  RequestResponseCode  1   0xE0 (GET_MEASUREMENTS)
       2  Param1               1   bit 0: signature requested (must be set)
       3  Param2               1   measurement operation (0xFF: all blocks)
       4  Nonce               32   the requester's nonce
      36  SlotIDParam          1   certificate slot (bits 0-3)

    MEASUREMENTS response
       0  SPDMVersion          1   same as the request
       1  RequestResponseCode  1   0x60 (MEASUREMENTS)
       2  Param1               1
       3  Param2               1   slot id (bits 0-3)
       4  NumberOfBlocks       1
       5  MeasurementRecordLength 3 = L1
       8  MeasurementRecord   L1   NumberOfBlocks measurement blocks
    8+L1  Nonce               32   the responder's nonce
   40+L1  OpaqueLength         2   = L2
   42+L1  OpaqueData          L2   NVIDIA's type-length-value fields
42+L1+L2  Signature           96   ECDSA P-384, raw r || s

    measurement block: Index (1) | MeasurementSpecification (1, bit 0: DMTF)
                       | MeasurementSize (2) | Measurement
    DMTF measurement:  DMTFSpecMeasurementValueType (1)
                       | DMTFSpecMeasurementValueSize (2) | value
    NVIDIA opaque field: DataType (2) | DataSize (2) | Data

This module only checks *structure*: lengths, codes, that every length
field tiles its region exactly, that base64, hex and PEM decode. It raises
:class:`~enclaved.errors.EvidenceParseError` when they do not. It checks no
signature, no certificate and no nonce: that is :mod:`.verify`'s job, and a
payload that parses says nothing about its authenticity.

Accepted: SPDM 1.1 with a 96-byte (P-384) signature, which is what Hopper
GPUs produce. Anything else is rejected as unsupported rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import struct
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from ...errors import EvidenceParseError
from .._x509 import DECODE_ERRORS, decoded_certificate

#: SPDM 1.1, the only version Hopper GPUs speak and the only one accepted.
SPDM_VERSION_1_1 = 0x11
#: SPDM request/response codes (DSP0274 table 4).
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
#: Length of the GET_MEASUREMENTS request with a signature requested (SPDM 1.1).
REQUEST_LENGTH = 37
#: Length of an SPDM nonce.
NONCE_LENGTH = 32
#: An ECDSA P-384 signature in SPDM's raw form: r || s, 48 bytes each.
SIGNATURE_LENGTH = 96
#: Bit 0 of MeasurementSpecification: the block follows the DMTF format.
DMTF_MEASUREMENT_SPECIFICATION = 0x01
#: A sane bound on the certificates in one GPU's chain (NVIDIA sends five).
MAX_CHAIN_LENGTH = 10

#: NVIDIA opaque-data field types this package reads (NVIDIA's numbering).
OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_FWID = 20

_BLOCK_HEADER = struct.Struct("<BBHBH")


@dataclasses.dataclass(frozen=True)
class MeasurementRequest:
    """The SPDM ``GET_MEASUREMENTS`` request the GPU answered."""

    version: int
    param1: int
    #: The measurement operation: 0xFF asks for every block.
    param2: int
    #: The requester's nonce. The verifier requires it to be the client's nonce.
    nonce: bytes
    slot_id: int
    #: The request exactly as received (it is part of the signed transcript).
    raw: bytes


@dataclasses.dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block of the ``MEASUREMENTS`` response."""

    index: int
    #: DMTFSpecMeasurementValueType: bit 7 set = raw bit stream, else a digest;
    #: bits 0-6 say what was measured (0 immutable ROM, 1 mutable firmware...).
    value_type: int
    value: bytes


@dataclasses.dataclass(frozen=True)
class OpaqueField:
    """One NVIDIA type-length-value field of the response's OpaqueData."""

    type: int
    value: bytes


@dataclasses.dataclass(frozen=True)
class MeasurementResponse:
    """The GPU's signed SPDM ``MEASUREMENTS`` response."""

    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    #: The responder's (GPU's) fresh nonce. Signed, not compared to anything.
    nonce: bytes
    opaque_data: bytes
    opaque_fields: tuple[OpaqueField, ...]
    #: ECDSA P-384 signature, raw r || s (96 bytes).
    signature: bytes
    #: The response exactly as received, signature included.
    raw: bytes

    def opaque(self, field_type: int) -> bytes | None:
        """The value of the first opaque field of ``field_type``, or None."""
        for field in self.opaque_fields:
            if field.type == field_type:
                return field.value
        return None


@dataclasses.dataclass(frozen=True)
class SpdmEvidence:
    """One GPU's SPDM exchange: the request, then the signed response."""

    request: MeasurementRequest
    response: MeasurementResponse

    @property
    def signed_bytes(self) -> bytes:
        """What the GPU signed (SPDM 1.1 "L1/L2"): request || response minus its signature.

        The signature is ECDSA P-384 over SHA-384 of these bytes. NVIDIA's own
        verifier computes the same message; DSP0274 1.1 section 10.11 defines it.
        """
        return self.request.raw + self.response.raw[: -len(self.response.signature)]


@dataclasses.dataclass(frozen=True)
class GpuEvidence:
    """One ``evidence_list`` entry: a GPU's certificate chain and its SPDM evidence."""

    #: Position in ``evidence_list`` (and the ``GPU-<index>`` of NRAS's answer).
    index: int
    arch: str
    #: The chain as sent, leaf (the GPU's attestation key) first.
    certificates: tuple[x509.Certificate, ...]
    spdm: SpdmEvidence

    @property
    def leaf(self) -> x509.Certificate:
        """The certificate of the key that signed the SPDM response."""
        return self.certificates[0]

    @property
    def driver_version(self) -> str | None:
        """The driver version the GPU reports in its signed opaque data (``570.172.08``)."""
        raw = self.spdm.response.opaque(OPAQUE_DRIVER_VERSION)
        if raw is None:
            return None
        return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")

    @property
    def vbios_version(self) -> str | None:
        """The VBIOS version in NVIDIA's notation (``96.00.CF.00.02``), from the opaque data."""
        raw = self.spdm.response.opaque(OPAQUE_VBIOS_VERSION)
        if raw is None or len(raw) != 8:
            return None
        # An 8-byte little-endian number; NVIDIA prints the low four bytes
        # most-significant first, then the lowest byte of the high half.
        digits = f"{int.from_bytes(raw, 'little'):016X}"
        low, high = digits[8:], digits[:8]
        return f"{low[0:2]}.{low[2:4]}.{low[4:6]}.{low[6:8]}.{high[6:8]}"

    @property
    def fwid(self) -> bytes | None:
        """The firmware id (a SHA-384 digest) the GPU reports in its opaque data."""
        return self.spdm.response.opaque(OPAQUE_FWID)

    @property
    def ueid(self) -> str:
        """The GPU's unique id as NRAS reports it: the leaf certificate's serial, in decimal."""
        return str(self.leaf.serial_number)


@dataclasses.dataclass(frozen=True)
class NvidiaPayload:
    """The parsed ``nvidia_payload``."""

    #: The nonce the payload says it was made for (the verifier compares it).
    nonce: bytes
    arch: str
    gpus: tuple[GpuEvidence, ...]
    #: The payload as a JSON string, exactly as received when it came as a
    #: string: this is what is sent to NVIDIA's attestation service.
    raw_json: str


def parse_nvidia_payload(payload: str | bytes | Mapping[str, Any]) -> NvidiaPayload:
    """Parse an ``nvidia_payload`` (a JSON string, its bytes, or the decoded object).

    Raises :class:`EvidenceParseError` when it is not structurally a payload.
    Checks nothing about authenticity (see :func:`enclaved.attestation.nvidia.verify_gpus`).
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvidenceParseError("nvidia_payload is not UTF-8") from exc
    if isinstance(payload, str):
        raw_json = payload
        try:
            doc = json.loads(payload)
        except ValueError as exc:
            raise EvidenceParseError("nvidia_payload is not valid JSON") from exc
    else:
        doc = payload
        raw_json = json.dumps(doc, separators=(",", ":"))
    if not isinstance(doc, Mapping):
        raise EvidenceParseError("nvidia_payload is not a JSON object")

    nonce = _hex_field(doc, "nonce", "nvidia_payload")
    arch = _str_field(doc, "arch", "nvidia_payload")
    entries = doc.get("evidence_list")
    if not isinstance(entries, list):
        raise EvidenceParseError("nvidia_payload.evidence_list is missing or not a list")
    gpus = tuple(_parse_entry(i, entry) for i, entry in enumerate(entries))
    return NvidiaPayload(nonce=nonce, arch=arch, gpus=gpus, raw_json=raw_json)


def parse_spdm_evidence(data: bytes) -> SpdmEvidence:
    """Parse one GPU's ``evidence``: a GET_MEASUREMENTS request then its MEASUREMENTS response."""
    if len(data) <= REQUEST_LENGTH:
        raise EvidenceParseError(f"SPDM evidence is {len(data)} bytes, too short")
    request = _parse_request(data[:REQUEST_LENGTH])
    response = _parse_response(data[REQUEST_LENGTH:])
    if response.version != request.version:
        raise EvidenceParseError(
            f"SPDM response version 0x{response.version:02x} differs from the "
            f"request's 0x{request.version:02x}"
        )
    return SpdmEvidence(request=request, response=response)


def parse_certificate_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parse a PEM certificate chain (leaf first). Cached: GPUs share most of their chain."""
    return _parse_pem_chain(bytes(pem))


# -- private ---------------------------------------------------------------


def _parse_entry(index: int, entry: Any) -> GpuEvidence:
    where = f"nvidia_payload.evidence_list[{index}]"
    if not isinstance(entry, Mapping):
        raise EvidenceParseError(f"{where} is not an object")
    arch = _str_field(entry, "arch", where)
    pem = _base64_field(entry, "certificate", where)
    spdm = _base64_field(entry, "evidence", where)
    try:
        certificates = parse_certificate_chain(pem)
        evidence = parse_spdm_evidence(spdm)
    except EvidenceParseError as exc:
        raise EvidenceParseError(f"{where}: {exc}") from exc
    return GpuEvidence(index=index, arch=arch, certificates=certificates, spdm=evidence)


@functools.lru_cache(maxsize=256)
def _parse_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except DECODE_ERRORS as exc:
        raise EvidenceParseError("certificate is not a PEM certificate chain") from exc
    if not 1 <= len(certificates) <= MAX_CHAIN_LENGTH:
        raise EvidenceParseError(
            f"certificate chain has {len(certificates)} certificates "
            f"(expected 1 to {MAX_CHAIN_LENGTH})"
        )
    # Names, extensions and keys decode lazily: decode them now, as a parse error.
    return tuple(decoded_certificate(c) for c in certificates)


def _parse_request(data: bytes) -> MeasurementRequest:
    version, code, param1, param2 = data[0], data[1], data[2], data[3]
    if version != SPDM_VERSION_1_1:
        raise EvidenceParseError(f"unsupported SPDM version 0x{version:02x} (expected 0x11)")
    if code != GET_MEASUREMENTS:
        raise EvidenceParseError(f"SPDM request code is 0x{code:02x}, not GET_MEASUREMENTS (0xe0)")
    if not param1 & 0x01:
        raise EvidenceParseError("the GET_MEASUREMENTS request did not ask for a signature")
    return MeasurementRequest(
        version=version,
        param1=param1,
        param2=param2,
        nonce=data[4 : 4 + NONCE_LENGTH],
        slot_id=data[36] & 0x0F,
        raw=data,
    )


def _parse_response(data: bytes) -> MeasurementResponse:
    reader = _Reader(data, "SPDM MEASUREMENTS response")
    version, code, param1, param2 = reader.take(4)
    if code != MEASUREMENTS:
        raise EvidenceParseError(f"SPDM response code is 0x{code:02x}, not MEASUREMENTS (0x60)")
    number_of_blocks = reader.uint(1)
    record = reader.take(reader.uint(3))
    blocks = _parse_measurement_record(record, number_of_blocks)
    nonce = reader.take(NONCE_LENGTH)
    opaque_data = reader.take(reader.uint(2))
    opaque_fields = _parse_opaque_data(opaque_data)
    signature = reader.rest()
    if len(signature) != SIGNATURE_LENGTH:
        raise EvidenceParseError(
            f"SPDM response ends with {len(signature)} bytes after the opaque data; "
            f"expected a {SIGNATURE_LENGTH}-byte ECDSA P-384 signature"
        )
    return MeasurementResponse(
        version=version,
        param1=param1,
        param2=param2,
        blocks=blocks,
        nonce=nonce,
        opaque_data=opaque_data,
        opaque_fields=opaque_fields,
        signature=signature,
        raw=data,
    )


def _parse_measurement_record(record: bytes, number_of_blocks: int) -> tuple[MeasurementBlock, ...]:
    # A hot loop (8 GPUs x 64 blocks per report): plain offsets, no _Reader.
    blocks = []
    offset, end = 0, len(record)
    while offset < end:
        if offset + 7 > end:
            raise EvidenceParseError("SPDM measurement record is truncated")
        # Index (1) | MeasurementSpecification (1) | MeasurementSize (2)
        # | DMTFSpecMeasurementValueType (1) | DMTFSpecMeasurementValueSize (2)
        index, specification, size, value_type, value_size = _BLOCK_HEADER.unpack_from(
            record, offset
        )
        if not specification & DMTF_MEASUREMENT_SPECIFICATION:
            raise EvidenceParseError(
                f"SPDM measurement block {index} is not in the DMTF format "
                f"(MeasurementSpecification 0x{specification:02x})"
            )
        if size != 3 + value_size:
            raise EvidenceParseError(
                f"SPDM measurement block {index}: MeasurementSize {size} does not "
                f"match its DMTF value size {value_size}"
            )
        value_start = offset + 7
        offset = value_start + value_size
        if offset > end:
            raise EvidenceParseError(f"SPDM measurement block {index} is truncated")
        blocks.append(
            MeasurementBlock(index=index, value_type=value_type, value=record[value_start:offset])
        )
    if len(blocks) != number_of_blocks:
        raise EvidenceParseError(
            f"SPDM response announces {number_of_blocks} measurement blocks "
            f"but its record holds {len(blocks)}"
        )
    return tuple(blocks)


def _parse_opaque_data(data: bytes) -> tuple[OpaqueField, ...]:
    reader = _Reader(data, "SPDM opaque data")
    fields = []
    while not reader.done:
        field_type = reader.uint(2)
        fields.append(OpaqueField(type=field_type, value=reader.take(reader.uint(2))))
    return tuple(fields)


class _Reader:
    """Reads a byte string front to back; running past the end is a parse error."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    @property
    def done(self) -> bool:
        return self._offset == len(self._data)

    def take(self, n: int) -> bytes:
        end = self._offset + n
        if end > len(self._data):
            raise EvidenceParseError(
                f"{self._what} is truncated: needs {end} bytes, has {len(self._data)}"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def rest(self) -> bytes:
        return self.take(len(self._data) - self._offset)


def _str_field(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise EvidenceParseError(f"{where}.{key} is missing or not a string")
    return value


def _hex_field(doc: Mapping[str, Any], key: str, where: str) -> bytes:
    value = _str_field(doc, key, where)
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise EvidenceParseError(f"{where}.{key} is not hex") from exc


def _base64_field(doc: Mapping[str, Any], key: str, where: str) -> bytes:
    value = _str_field(doc, key, where)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError(f"{where}.{key} is not base64") from exc
