"""The autograd nodes a backward pass from some tensors would run, each once (for tests that
ask which nodes a graph holds)."""

from __future__ import annotations


def graph_nodes(*tensors):
    """Every node reachable from the tensors' ``grad_fn``, depth first, each once."""
    stack, seen = [t.grad_fn for t in tensors], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack += [f for f, _ in node.next_functions]
