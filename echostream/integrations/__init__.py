"""Adapters that let other evaluation frameworks drive EchoStream's streaming translator (for
example ``simuleval_agent``: SimulEval 1.1.4 agents). Each adapter imports its framework itself,
so importing this package pulls in nothing heavy."""
