"""Old name of plugins.pkg.schema, kept only until dp-steering imports plugins.pkg.schema
(plugins/meta/dp_steering/cmd.py, tests/unit/test_dp_steering_config.py); then delete it."""
from plugins.pkg.schema import supported, validate, validator  # noqa: F401
