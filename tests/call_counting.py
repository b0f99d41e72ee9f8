"""Wrappers that count how often the tests' kernel functions run, so a test can show which path ran."""


class CountCalls:
    """Wrap a kernel function and count how often it runs."""

    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


class CountingKernels:
    """Stand in for the compiled kernels module and count the calls of each of its functions."""

    def __init__(self, module):
        self.module, self.calls = module, {}

    def __getattr__(self, name):
        function = getattr(self.module, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return function(*args, **kwargs)

        return counted
