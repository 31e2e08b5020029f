"""`vfa node`: a DICOM node that receives VFA studies from a PACS or scanner (C-STORE), reads each
complete study with one warm model, and sends the SR + SC results back (docs/node.md).

config (settings), screen (which instances are VFA), queue (the durable SQLite queue), scp
(receiving, pynetdicom), results (reading, derived UIDs), sender (C-STORE SCU), service (the loop),
status (status and resend from outside)."""
