"""`repair`: scale the intruders' singular values by λ (the v2 intervention), written exactly; controls; sweeps."""

from intrudim.repair.config import DEFAULT_LAMBDA, RepairConfig
from intrudim.repair.core import MatrixRepair, MatrixRepairPlan, RepairResult, plan_repairs, repair

__all__ = ["DEFAULT_LAMBDA", "MatrixRepair", "MatrixRepairPlan", "RepairConfig", "RepairResult", "plan_repairs", "repair"]
