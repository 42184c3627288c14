"""Governance logic (audit hash chain, model-card facts): computed here, rendered by report/."""
