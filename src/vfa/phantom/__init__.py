"""The synthetic VFA phantom: a spine with Genant-graded fractures, written as PNG or DICOM."""
