"""The test suite: fast module tests here, end-to-end ones in e2e/ (all slow), shared harness in support/."""
