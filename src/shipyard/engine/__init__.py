"""Carries rollout decisions out, reaching the world only through ports."""
