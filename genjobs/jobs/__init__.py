"""The job contract: the payload model, the job-type table and the render plan."""
