"""TALE-PT and SelfBudgeter training: data builders first (`training.data`)."""
