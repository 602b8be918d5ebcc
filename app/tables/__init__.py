from app.tables.api_key import ApiKey
from app.tables.audit_event import AuditEvent
from app.tables.base import Base
from app.tables.dataset import Dataset
from app.tables.idempotency import IdempotencyRecord
from app.tables.job import Job, JobEpoch, JobStatus, JobType
from app.tables.job_attempt import JobAttempt
from app.tables.job_event import JobEvent
from app.tables.model_label import ModelLabel
from app.tables.model_serving import ModelServing
from app.tables.model_version import ModelVersion
from app.tables.spec import Spec
from app.tables.tenant_quota import TenantQuota

__all__ = ["ApiKey", "AuditEvent", "Base", "Dataset", "IdempotencyRecord", "Job", "JobAttempt",
           "JobEpoch", "JobEvent", "JobStatus", "JobType", "ModelLabel", "ModelServing",
           "ModelVersion", "Spec", "TenantQuota"]
