"""What the tests share: the sweep harness and the throwaway servers, nodes and data they start or make."""
