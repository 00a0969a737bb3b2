"""budgetlib: token-budget-aware LLM reasoning (TALE, SelfBudgeter) as a thin
helper package for numbered notebooks."""

__version__ = "0.1.0"
