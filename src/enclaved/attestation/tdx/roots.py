"""The one root that a genuine TDX quote chains to: the Intel SGX Root CA.

Pinned here byte for byte (DER, 659 bytes). It is the self-signed root that
ends every PCK chain and every PCS issuer chain in the recorded captures
(``shared/testdata/captures/*/responses/000[2-4]_*.json`` headers and the
quotes' own certification data), and it is the same file that Intel's and
Phala's verifiers ship (``TrustedRootCA.der``).

    subject   CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US
    serial    22650cd65a9d3489f383b49552bf501b392706ac
    validity  2018-05-21T10:45:10Z .. 2049-12-31T23:59:59Z
    SHA-256   44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3

Note: ``certificates.trustedservices.intel.com/IntelSGXRootCA.der`` (the URL
the root names as its CRL distribution point) serves the root's *CRL*, not
this certificate; see :mod:`.collateral`.

Trust in anything else (the simulated TEE's development root) must be asked
for explicitly by passing it in ``trust_roots``.
"""

from __future__ import annotations

import base64
import functools

from cryptography import x509

__all__ = ["INTEL_SGX_ROOT_CA_DER", "INTEL_SGX_ROOT_CA_SHA256", "intel_sgx_root_ca"]

INTEL_SGX_ROOT_CA_DER: bytes = base64.b64decode(
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw"
    "aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv"
    "cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ"
    "BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG"
    "A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0"
    "aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT"
    "AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7"
    "1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB"
    "uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ"
    "MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50"
    "ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV"
    "Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI"
    "KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg"
    "AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI="
)

#: SHA-256 of :data:`INTEL_SGX_ROOT_CA_DER` (checked by the tests).
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@functools.cache
def intel_sgx_root_ca() -> x509.Certificate:
    """The pinned Intel SGX Root CA, parsed."""
    return x509.load_der_x509_certificate(INTEL_SGX_ROOT_CA_DER)
