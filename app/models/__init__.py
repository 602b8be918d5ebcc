from app.models.base import Base
from app.models.dataset import Dataset
from app.models.job import Job, JobEpoch, JobStatus, JobType
from app.models.registry import ModelVersion
from app.models.spec import Spec

__all__ = ["Base", "Dataset", "Job", "JobEpoch", "JobStatus", "JobType", "ModelVersion", "Spec"]
