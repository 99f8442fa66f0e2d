"""The Optuna study: storage, the keys it stores (records), claims, settings, evaluations, the dashboard."""
