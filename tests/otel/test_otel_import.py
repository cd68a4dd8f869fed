"""OpenTelemetry stays out of ``import openai_lb``; ``openai_lb.otel`` without it says how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


def test_openai_lb_never_imports_opentelemetry_with_or_without_hooks() -> None:
    done = run_python(
        """
        import sys

        import openai_lb
        from openai_lb.testing import FakeAzureOpenAI

        def loaded():
            return sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")

        assert not loaded(), f"import openai_lb loaded {loaded()}"
        seen = []
        with FakeAzureOpenAI(name="ptu") as ptu:
            for hooks in (None, seen.append, [seen.append, lambda event: None]):
                client = openai_lb.AzureOpenAI(
                    backends=[openai_lb.Backend(ptu.url)],
                    on_event=hooks,
                    api_key="k",
                    api_version="2024-10-21",
                    max_retries=0,
                    health_store=openai_lb.InMemoryHealthStore(),
                )
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
                client.close()
        assert seen, "the hooks were called"
        assert not loaded(), f"requests with hooks loaded {loaded()}"
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stdout


def test_openai_lb_otel_without_the_opentelemetry_api_says_how_to_install_it() -> None:
    done = run_python(
        """
        import sys

        sys.modules["opentelemetry"] = None  # as if the package were not installed
        try:
            import openai_lb.otel
        except ImportError as error:
            print(error)
        else:
            print("imported")
        """
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "openai-lb[otel]"' in done.stdout, f"the error does not say what to install: {done.stdout!r}"
