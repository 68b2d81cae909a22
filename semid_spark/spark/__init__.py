"""The Spark side: session, input validation, sampling, encoding on executors, the pipeline."""
