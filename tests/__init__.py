"""
The trial suite of proto.

Property tests share one hypothesis profile: no per-example deadline and no
``too_slow`` health check, because CI and developers run the suite on a
loaded 2-core machine where generation time says nothing about the code.
The number of examples is still set per test.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "proto",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("proto")
