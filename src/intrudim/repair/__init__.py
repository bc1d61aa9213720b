"""`repair`: scale the intruders' singular values by λ (the v2 intervention), written exactly; controls; sweeps."""

from intrudim.repair.config import DEFAULT_LAMBDA, RepairConfig
from intrudim.repair.core import repair
from intrudim.repair.plan import MatrixRepairPlan, plan_repairs
from intrudim.repair.result import MatrixRepair, RepairResult

__all__ = ["DEFAULT_LAMBDA", "MatrixRepair", "MatrixRepairPlan", "RepairConfig", "RepairResult", "plan_repairs", "repair"]
