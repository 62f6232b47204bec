"""Settings: ``PipelineConfig`` (env defaults + a run's Params) and the declarative gate spec."""
