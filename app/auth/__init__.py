"""Who is calling: API keys, tenants' quotas, rate limits and the audit log."""
