"""Test helpers shared by the test tiers (redis, cluster, e2e)."""
