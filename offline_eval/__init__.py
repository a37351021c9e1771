"""Offline evaluation: recall through vpr_core directly and through the real node (bag replay)."""
