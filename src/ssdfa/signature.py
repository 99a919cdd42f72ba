"""The signature tools read off a converted model: the net's arguments plus ``target``, and the
attributes Hugging Face's Trainer looks for, so a wrapped model is called as the user's was."""

from __future__ import annotations

import inspect

# Hugging Face Trainer reads these off the model: its config (use_cache, the output keys to ignore
# in evaluation), the loss kind (a causal-LM loss counts its tokens over labels[..., 1:]: without
# it the loss, and every gradient, would come out (T-1)/T of the plain model's), whether forward
# takes loss kwargs, and the main input's name
SHOWN = ("config", "loss_type", "accepts_loss_kwargs", "main_input_name")


def new_unsigned(cls):
    return cls.__new__(cls)


_SIGNED: dict = {}  # (class, signature text) -> its signed subclass


def signed_class(cls, net):
    """A subclass of ``cls`` (same name) whose ``forward`` signature is ``net.forward``'s plus
    the keyword ``target``, so that tools that pick inputs by the signature (Hugging Face
    ``Trainer`` keeps the dataset columns it names, finds ``labels`` in it and passes loss
    kwargs when it has ``**kwargs``) see the wrapped model's arguments, not ``*args, **kwargs``.
    The subclass only delegates ``forward``; ``cls`` itself when the net has no signature."""
    cls = getattr(cls, "_signed_base", cls)
    try:
        sig = inspect.signature(net.forward)
        params = list(sig.parameters.values())
        if "target" not in sig.parameters:
            at = next((i for i, q in enumerate(params) if q.kind is q.VAR_KEYWORD), len(params))
            params.insert(at, inspect.Parameter("target", inspect.Parameter.KEYWORD_ONLY, default=None))
        sig = sig.replace(parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY), *params])
    except (TypeError, ValueError):  # a builtin or C forward: keep (*args, target, **kwargs)
        return cls
    key = (cls, str(sig))
    if key not in _SIGNED:

        def forward(self, *args, **kwargs):
            return super(signed, self).forward(*args, **kwargs)

        forward.__signature__ = sig
        forward.__doc__ = cls.forward.__doc__
        signed = type(
            cls.__name__,
            (cls,),
            {
                "forward": forward,
                "_signed_base": cls,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            },
        )
        _SIGNED[key] = signed
    return _SIGNED[key]
