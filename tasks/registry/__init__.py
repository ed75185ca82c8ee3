"""MLflow: the tracking facade, registered versions, promotion by alias and the served pyfunc model."""
