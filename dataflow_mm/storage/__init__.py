"""Step files, table formats, atomic writes and manifests."""

from dataflow_mm.storage.chunks import Chunk, Reject
from dataflow_mm.storage.file_storage import FileStorage
from dataflow_mm.storage.formats import iter_table, read_table
from dataflow_mm.storage.manifest import StepManifest, file_sha256, fingerprint
from dataflow_mm.storage.table_writer import AtomicTableWriter, write_table

__all__ = [
    "AtomicTableWriter",
    "Chunk",
    "FileStorage",
    "Reject",
    "StepManifest",
    "file_sha256",
    "fingerprint",
    "iter_table",
    "read_table",
    "write_table",
]
