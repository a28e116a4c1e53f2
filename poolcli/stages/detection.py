"""Detection-style pooling: CenterNet center pooling, CornerNet corner pooling."""
