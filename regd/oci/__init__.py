"""Pure OCI facts shared by the daemon and the command-line tool.

Nothing here does I/O: digests, names, references, media types and manifest parsing.
"""

from regd.oci.digest import Digest, DigestError, Hasher
from regd.oci.manifest import Descriptor, Manifest, ManifestError, parse_manifest
from regd.oci.names import NameError_, is_valid_repository, is_valid_tag
from regd.oci.reference import Reference, ReferenceError_, parse_reference

__all__ = [
    "Descriptor",
    "Digest",
    "DigestError",
    "Hasher",
    "Manifest",
    "ManifestError",
    "NameError_",
    "Reference",
    "ReferenceError_",
    "is_valid_repository",
    "is_valid_tag",
    "parse_manifest",
    "parse_reference",
]
