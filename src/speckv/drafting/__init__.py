"""Drafting strategies: how candidate tokens are proposed (chain now; trees and retrieval later)."""
