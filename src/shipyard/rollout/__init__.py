"""Deciding: the rollout state machines (pure) and the controller that carries out their actions."""
