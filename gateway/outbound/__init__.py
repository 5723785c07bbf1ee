"""The outbound steps: classify, decide, rewrite, sign (pure where they can be)."""
