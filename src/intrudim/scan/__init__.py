"""`intrudim scan BASE TUNED...`: a leaderboard of intruder dimensions over many tuned models of one base,
in-process or on Ray (docs/scan.md)."""

from intrudim.scan.config import PRESSURE_THRESHOLD, ScanConfig
from intrudim.scan.running import ScanResult, scan

__all__ = ["PRESSURE_THRESHOLD", "ScanConfig", "ScanResult", "scan"]
