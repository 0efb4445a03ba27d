"""Chat templates: our C renderer against jinja2 configured like transformers.

transformers' apply_chat_template compiles templates with
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
extensions=[loopcontrols]), a tojson filter that is json.dumps with
ensure_ascii=False, and raise_exception / strftime_now globals; it renders
with messages, tools (None when absent), documents, add_generation_prompt and
the special tokens. We render every case both ways and require byte equality,
or an error from both (with the same message when raise_exception raised it).

The C side is reached through ctypes: VLLM_METAL_LIB names the shared library
(build/libvllm_metal.so under `make test`; any .so holding
src/tokenizer/chat_template.c works for development).
"""

import copy
import ctypes
import json
import os
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "tests" / "data" / "templates"


# ----------------------------------------------------------------- renderers

@pytest.fixture(scope="module")
def lib():
    path = os.environ.get("VLLM_METAL_LIB", str(ROOT / "build" / "libvllm_metal.so"))
    if not os.path.exists(path):
        pytest.fail(f"shared library not found: {path} (set VLLM_METAL_LIB)")
    so = ctypes.CDLL(path)
    so.vm_chat_template_render_json.restype = ctypes.c_void_p
    so.vm_chat_template_render_json.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    so.vm_free_string.argtypes = [ctypes.c_void_p]
    so.vm_free_string.restype = None
    return so


def render_c(lib, source, ctx):
    err = ctypes.create_string_buffer(2048)
    ptr = lib.vm_chat_template_render_json(source.encode(), json.dumps(ctx, ensure_ascii=False).encode(), err, len(err))
    if not ptr:
        return False, err.value.decode("utf-8", "replace")
    try:
        return True, ctypes.string_at(ptr).decode()
    finally:
        lib.vm_free_string(ptr)


class AssistantTracker(jinja2.ext.Extension):
    """transformers' {% generation %} tag: renders its body (tracking is off)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = _env()


_COMPILED = {}


def render_py(source, ctx):
    """(ok, text) where text is the output, or (kind, message) on error."""
    try:
        if source not in _COMPILED:
            _COMPILED[source] = ENV.from_string(source)
        tmpl = _COMPILED[source]
    except Exception as e:  # TemplateSyntaxError, or SyntaxError for a misplaced break
        return False, f"syntax: {e}"
    try:
        return True, tmpl.render(**copy.deepcopy(ctx))
    except jinja2.exceptions.TemplateError as e:
        # TemplateError itself (not a subclass) is what raise_exception raises
        if type(e) is jinja2.exceptions.TemplateError:
            return False, f"raise: {e.message}"
        return False, f"{type(e).__name__}: {e}"
    except Exception as e:  # TypeError, ValueError, ... from Python operations
        return False, f"{type(e).__name__}: {e}"


def check(lib, source, ctx):
    want_ok, want = render_py(source, ctx)
    got_ok, got = render_c(lib, source, ctx)
    if want_ok:
        assert got_ok, f"jinja2 rendered {want!r} but C failed: {got}"
        assert got == want
    else:
        assert not got_ok, f"jinja2 failed ({want}) but C rendered {got!r}"
        if want.startswith("raise: "):
            assert got == want[len("raise: "):]
    return want_ok, want


# ----------------------------------------------------------------- conversations

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city — «quoted» \"text\"",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        "return": {"type": "string"},
    },
}
TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

SYS = {"role": "system", "content": "You are a careful assistant.\nAnswer briefly."}
U1 = {"role": "user", "content": "Hello! How are you?"}
A1 = {"role": "assistant", "content": "I'm fine, thanks. And you?"}
U2 = {"role": "user", "content": "Tell me a joke about C compilers."}
A2 = {"role": "assistant", "content": "  Why did the compiler break up? Too many warnings.  \n"}
U3 = {"role": "user", "content": "Ünïcødé 😀 中文 \"quotes\" 'single' back\\slash\ttab"}
UWS = {"role": "user", "content": "\n\n  padded with whitespace  \n\n"}
UEMPTY = {"role": "user", "content": ""}


def base_conversations():
    """(name, messages, extra) that every text template should handle."""
    long = []
    for i in range(6):
        long += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    long.append({"role": "user", "content": "last question"})
    return [
        ("single_user", [U1], {}),
        ("system_user", [SYS, U1], {}),
        ("multi_turn", [U1, A1, U2], {}),
        ("system_multi_turn", [SYS, U1, A1, U2], {}),
        ("ends_with_assistant", [U1, A1], {}),
        ("system_ends_with_assistant", [SYS, U1, A1, U2, A2], {}),
        ("unicode", [SYS, U3], {}),
        ("whitespace", [UWS, A2, UWS], {}),
        ("empty_content", [UEMPTY], {}),
        ("long", long, {}),
        ("empty_messages", [], {}),
        ("only_system", [SYS], {}),
        ("two_users", [U1, U2], {}),
        ("two_systems", [SYS, U1, {"role": "system", "content": "Second system."}, U2], {}),
        ("assistant_first", [A1, U1], {}),
        ("list_content", [{"role": "user", "content": [{"type": "text", "text": "part one"}]}], {}),
        ("none_content", [U1, {"role": "assistant", "content": None}, U2], {}),
        ("unknown_role", [U1, {"role": "critic", "content": "Hmm."}], {}),
    ]


def tool_conversations(ids9=True):
    cid1 = "abc123xyz" if ids9 else "call_1"
    cid2 = "def456uvw" if ids9 else "call_2"
    call1 = {"id": cid1, "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
    call2 = {"id": cid2, "type": "function", "function": {"name": "search", "arguments": {"q": "météo"}}}
    ask = {"role": "user", "content": "What's the weather in Paris?"}
    return [
        ("tools_available", [ask], {"tools": TOOLS}),
        ("tools_with_system", [SYS, ask], {"tools": TOOLS}),
        ("tool_call", [ask, {"role": "assistant", "content": None, "tool_calls": [call1]}], {"tools": TOOLS}),
        ("tool_call_and_result", [
            SYS, ask,
            {"role": "assistant", "content": "", "tool_calls": [call1]},
            {"role": "tool", "tool_call_id": cid1, "name": "get_weather", "content": "{\"temp\": 21}"},
        ], {"tools": TOOLS}),
        ("tool_full_round", [
            ask,
            {"role": "assistant", "content": None, "tool_calls": [call1]},
            {"role": "tool", "tool_call_id": cid1, "content": "21 degrees"},
            {"role": "assistant", "content": "It is 21 degrees in Paris."},
            {"role": "user", "content": "Thanks!"},
        ], {"tools": TOOLS}),
        ("two_tool_calls", [
            ask,
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call1, call2]},
            {"role": "tool", "tool_call_id": cid1, "content": "21 degrees"},
            {"role": "tool", "tool_call_id": cid2, "content": "sunny"},
        ], {"tools": TOOLS}),
        ("string_arguments", [
            ask,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": cid1, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        ], {"tools": TOOLS}),
        ("tool_result_without_tools", [
            ask,
            {"role": "assistant", "content": None, "tool_calls": [call1]},
            {"role": "tool", "tool_call_id": cid1, "content": "21 degrees"},
        ], {}),
        ("tools_empty_list", [ask], {"tools": []}),
    ]


def contexts_for(model):
    convs = base_conversations()
    if model in ("Llama-3.1-8B-Instruct", "Llama-3.2-3B-Instruct", "Qwen2.5-7B-Instruct", "Qwen3-0.6B",
                 "Mistral-7B-Instruct-v0.3"):
        convs += tool_conversations(ids9=True)
    if model == "Mistral-7B-Instruct-v0.3":
        convs += [(n + "_bad_ids", m, x) for n, m, x in tool_conversations(ids9=False)[2:5]]
        convs += [
            ("tool_results_role", [U1, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "abc123xyz", "function": {"name": "search", "arguments": {"q": "x"}}}]},
                {"role": "tool_results", "tool_call_id": "abc123xyz", "content": {"content": ["a", 1, None]}}], {"tools": TOOLS}),
        ]
    if model.startswith("Llama-3"):
        convs += [
            ("date_string", [SYS, U1], {"date_string": "01 Jan 2025"}),
            ("tools_in_system", [SYS, U1], {"tools": TOOLS, "tools_in_user_message": False}),
            ("ipython_dict_content", [U1, {"role": "assistant", "content": None, "tool_calls": [
                {"function": {"name": "search", "arguments": {"q": "x"}}}]},
                {"role": "ipython", "content": {"result": [1, 2.5, True, None]}}], {"tools": TOOLS}),
            ("custom_tools", [U1], {"custom_tools": [WEATHER_TOOL]}),
            ("tools_no_user", [SYS], {"tools": TOOLS}),
        ]
    if model == "Llama-3.1-8B-Instruct":
        convs += [
            ("builtin_tools", [SYS, U1], {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}),
            ("builtin_tool_call", [U1, {"role": "assistant", "content": None, "tool_calls": [
                {"function": {"name": "brave_search", "arguments": {"query": "weather"}}}]}],
             {"builtin_tools": ["brave_search"]}),
        ]
    if model == "Qwen3-0.6B":
        convs += [
            ("reasoning_content", [U1, {"role": "assistant", "content": "Fine.", "reasoning_content": "User greets."}, U2], {}),
            ("think_in_content", [U1, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nFine."}], {}),
            ("think_old_turn", [U1, {"role": "assistant", "content": "<think>a</think>b"}, U2], {}),
            ("enable_thinking_false", [U1], {"enable_thinking": False}),
            ("enable_thinking_true", [U1], {"enable_thinking": True}),
            ("tool_response_user", [U1, {"role": "user", "content": "<tool_response>x</tool_response>"}], {}),
        ]
    if model == "Qwen2-VL-7B-Instruct":
        img = {"type": "image", "image": "file:///a.png"}
        url = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
        vid = {"type": "video", "video": "file:///v.mp4"}
        convs += [
            ("image_and_text", [{"role": "user", "content": [img, {"type": "text", "text": "What is this?"}]}], {}),
            ("two_images", [SYS, {"role": "user", "content": [img, url, {"type": "text", "text": "Compare."}]}], {}),
            ("video", [{"role": "user", "content": [vid, {"type": "text", "text": "Describe."}]}], {}),
            ("vision_ids", [{"role": "user", "content": [img, vid, img, {"type": "text", "text": "Hi"}]},
                            {"role": "assistant", "content": "Ok."},
                            {"role": "user", "content": [url, {"type": "text", "text": "And this?"}]}],
             {"add_vision_id": True}),
            ("parts_assistant", [{"role": "user", "content": [img]},
                                 {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}], {}),
            ("unknown_part", [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}], {}),
        ]
    out = []
    for name, messages, extra in convs:
        for agp in (False, True):
            ctx = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": agp,
                   "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
            ctx.update(extra)
            out.append((f"{name}-agp{int(agp)}", ctx))
    return out


MODELS = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))


def test_all_templates_present():
    for m in ["SmolLM2-135M-Instruct", "Llama-3.1-8B-Instruct", "Llama-3.2-3B-Instruct", "Qwen2.5-7B-Instruct",
              "Qwen3-0.6B", "Mistral-7B-Instruct-v0.3", "Qwen2-VL-7B-Instruct"]:
        assert m in MODELS


@pytest.mark.parametrize("model", MODELS)
def test_real_template(lib, model):
    source = (TEMPLATES / f"{model}.jinja").read_text()
    cases = contexts_for(model)
    assert len(cases) >= 30
    rendered = 0
    for name, ctx in cases:
        try:
            ok, _ = check(lib, source, ctx)
        except AssertionError as e:
            raise AssertionError(f"{model} case {name}: {e}") from None
        rendered += ok
    assert rendered >= 20, f"{model}: only {rendered} cases rendered without error"


# ----------------------------------------------------------------- constructs

V = {
    "s": "Hello World", "n": 7, "f": 2.5, "neg": -3, "t": True, "nul": None, "e": "", "zero": 0,
    "l": [3, 1, 2], "sl": ["b", "A", "c", "a"], "d": {"b": 1, "a": 2, "c": None},
    "msgs": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "tool_calls": [1]},
             {"role": "user", "content": "z"}],
    "nested": {"a": {"b": [10, {"c": "deep"}]}}, "u": "Grüße 😀 Ω", "big": 12345678901234,
    "floats": [0.1, 1e-05, 1e16, 123456789.123, -0.0, 3.0, 1.5e300],
}

CONSTRUCTS = [
    # output and literals
    "{{ 'a' ~ \"b\" ~ 'c\\n\\t\\\\\\'\\x41\\u00e9' }}", "{{ 42 }}{{ -7 }}{{ 3.14 }}{{ 1e3 }}{{ 1_000 }}",
    "{{ true }} {{ True }} {{ false }} {{ none }} {{ None }}", "{{ [1, 'a', none, true, 2.0] }}",
    "{{ {'a': 1, 'b': [1, 2]} }}", "{{ (1, 2) }} {{ (1,) }} {{ () }}", "{{ 'a' 'b' }}",
    "{{ \"it's\" }} {{ ['it\\'s', \"q\\\"\", 'nl\\n'] }}", "{{ floats }}", "{{ big }} {{ n }}",
    "{{ undefined_var }}|{{ nul }}|{{ t }}", "{{ d }}", "{{ u }} {{ [u] }}",
    "{{ ['\\x00\\x7f\\xa0\\u2028'] }}",
    # operators
    "{{ 1 + 2 * 3 - 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7.5 // 2 }}",
    "{{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 1 + 1.5 }} {{ true + 1 }}",
    "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ 2 >= 2 }} {{ 1 != 2 }}",
    "{{ 'a' in 'cat' }} {{ 3 in l }} {{ 'a' in d }} {{ 'z' not in d }} {{ 5 not in l }}",
    "{{ n and s }} {{ e or 'dflt' }} {{ not e }} {{ nul or zero or 'x' }} {{ t and nul }}",
    "{{ 'yes' if t else 'no' }} {{ 'yes' if e else 'no' }} [{{ 'x' if e }}]",
    "{{ s ~ n ~ nul ~ undefined_var }}", "{{ -n }} {{ +f }} {{ - -n }}", "{{ 1 / 4 }} {{ 10 / 5 }}",
    "{{ 2 ** -1 }} {{ 0.1 + 0.2 }} {{ 1e300 * 1e300 }}",
    # attribute / item / slice
    "{{ d.a }} {{ d['b'] }} {{ d.missing }} {{ nested.a.b[1].c }} {{ nested['a']['b'][0] }}",
    "{{ l[0] }} {{ l[-1] }} {{ l[5] }} {{ s[0] }} {{ s[-1] }} {{ u[1] }} {{ u[-3] }}",
    "{{ l[1:] }} {{ l[:-1] }} {{ l[::-1] }} {{ s[::-1] }} {{ s[2:5] }} {{ u[::-1] }} {{ l[::2] }} {{ s[-3:] }} {{ l[10:] }}",
    "{{ msgs[1:] | length }} {{ msgs[0].role }} {{ msgs[-1]['content'] }}",
    "{{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('zz', 5) }} {{ d.get('zz') }}",
    "{{ l.0 }}",
    # string methods
    "{{ s.startswith('Hell') }} {{ s.endswith('x') }} {{ s.startswith(('x', 'He')) }} {{ s.upper() }} {{ s.lower() }}",
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ '\\n\\na\\n'.lstrip('\\n') }}",
    "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a</think>b</think>c'.split('</think>')[-1] }} {{ 'a-b-c'.split('-', 1) }} {{ 'a-b-c'.rsplit('-', 1) }}",
    "{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}",
    "{{ 'abcabc'.find('c') }} {{ 'abcabc'.count('bc') }} {{ ', '.join(['a', 'b']) }} {{ '12'.isdigit() }} {{ 'ab'.isalpha() }}",
    # tests
    "{{ s is string }} {{ n is number }} {{ n is integer }} {{ f is float }} {{ t is boolean }} {{ nul is none }} {{ d is mapping }}",
    "{{ l is iterable }} {{ s is iterable }} {{ n is iterable }} {{ l is sequence }} {{ d is sequence }} {{ zz is iterable }}",
    "{{ zz is defined }} {{ zz is undefined }} {{ s is defined }} {{ d.zz is defined }} {{ nul is not none }}",
    "{{ t is true }} {{ n is true }} {{ t is false }} {{ false is false }} {{ n is equalto 7 }} {{ n is eq(7) }} {{ n is ne 7 }}",
    "{{ n is odd }} {{ n is even }} {{ 9 is divisibleby 3 }} {{ n is gt 3 }} {{ n is lt 3 }} {{ n is ge 7 }} {{ n is le 6 }}",
    "{{ 'a' is in 'cat' }} {{ s is lower }} {{ 'ABC' is upper }} {{ range is callable }} {{ t is not false }}",
    "{{ not zz is defined }} {{ not (s is defined) }}",
    # filters
    "{{ '  x  ' | trim }}|{{ 'xxyxx' | trim('x') }}|{{ l | length }} {{ s | count }} {{ d | length }} {{ zz | length }}",
    "{{ d | tojson }} {{ l | tojson }} {{ u | tojson }} {{ floats | tojson }} {{ nul | tojson }} {{ t | tojson }}",
    "{{ nested | tojson(indent=2) }}{{ d | tojson(indent=4) }}{{ [] | tojson(indent=2) }}{{ {} | tojson(indent=2) }}",
    "{{ d | tojson(sort_keys=true) }} {{ u | tojson(ensure_ascii=true) }} {{ d | tojson(separators=(',', ':')) }}",
    "{{ l | join(', ') }} {{ sl | join }} {{ msgs | join('|', attribute='role') }} {{ [1, none, 'a'] | join('-') }}",
    "{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %} {{ d | items | list }} {{ zz | items | list }}",
    "{{ s | list }} {{ d | list }} {{ l | first }} {{ l | last }} {{ s | first }} {{ [] | first }} {{ s | last }}",
    "{{ msgs | selectattr('role', 'equalto', 'user') | list | length }} {{ msgs | rejectattr('role', 'eq', 'user') | map(attribute='content') | list }}",
    "{{ msgs | selectattr('tool_calls') | list | length }} {{ msgs | selectattr('tool_calls', 'defined') | list | length }} {{ msgs | rejectattr('tool_calls', 'undefined') | list | length }}",
    "{{ l | select('odd') | list }} {{ l | reject('equalto', 2) | list }} {{ ['a', 'code', 'b'] | reject('equalto', 'code') | join(', ') }} {{ l | select | list }}",
    "{{ msgs | map(attribute='role') | join(',') }} {{ msgs | map(attribute='zz', default='D') | list }} {{ l | map('string') | list }} {{ sl | map('upper') | list }}",
    "{{ n | string }} {{ l | string }} {{ nul | string }} {{ zz | string }}|{{ s | upper }} {{ s | lower }} {{ 'hello wORLD-x(y' | title }} {{ 'hELLO' | capitalize }}",
    "{{ zz | default('dflt') }} {{ s | default('dflt') }} {{ e | default('dflt') }} {{ e | default('dflt', true) }} {{ zz | d(3) }} {{ nul | default(1) }}",
    "{{ s | replace('l', 'L') }} {{ s | replace('l', 'L', 1) }} {{ '3' | int + 1 }} {{ '3.7' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 'q' | float }} {{ n | float }}",
    "{{ neg | abs }} {{ -2.5 | abs }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }} {{ 7 | round }} {{ 2.1 | round(0, 'ceil') }} {{ 2.9 | round(method='floor') }}",
    "{{ sl | unique | list }} {{ sl | unique(case_sensitive=true) | list }} {{ [1, 2, 1, 3] | unique | list }}",
    "{{ d | dictsort }} {{ d | dictsort(reverse=true) }} {{ {'b': 2, 'a': 3} | dictsort(by='value') }} {{ sl | sort }} {{ sl | sort(reverse=true) }} {{ sl | sort(case_sensitive=true) }} {{ msgs | sort(attribute='content', reverse=true) | map(attribute='content') | join }}",
    "{{ s | safe }} {{ '<a href=\"x\">&</a>' | e }} {{ '<b>' | escape }} {{ l | reverse | list }} {{ s | reverse }} {{ l | sum }} {{ l | min }} {{ l | max }} {{ sl | max }}",
    "{{ 'a b  c' | wordcount }} [{{ 'ab' | center(6) }}] {{ 'a\\nb\\n\\nc' | indent(2) }} {{ 'a\\nb' | indent(2, true) }} {{ l | batch(2) | list }} {{ l | slice(2) | list }}",
    "{{ s | trim | upper | replace('WORLD', 'there') | lower | length }}",
    "{{ -1 | abs }} {{ (l | first) + 1 }} {{ [l | length, s | length] }}",
    # statements
    "{% if n > 5 %}big{% elif n > 2 %}mid{% else %}small{% endif %}{% if e %}x{% elif nul %}y{% endif %}",
    "{% for x in l %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }};{% endfor %}",
    "{% for x in l %}{{ loop.previtem }}>{{ x }}<{{ loop.nextitem }} {{ loop.cycle('a', 'b') }};{% endfor %}",
    "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in zz %}x{% else %}undef-empty{% endfor %}",
    "{% for x in l if x > 1 %}{{ x }}:{{ loop.index }}/{{ loop.length }},{% endfor %}",
    "{% for x in l %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for k in d %}{{ k }}{% endfor %} {% for c in 'ab' %}[{{ c }}]{% endfor %} {% for a, b in [(1, 2), (3, 4)] %}{{ a + b }}{% endfor %}",
    "{% for x in [1, 2] %}{% for y in [3, 4] %}{{ loop.index }}{{ x }}{{ y }} {% endfor %}{{ loop.index }}|{% endfor %}",
    "{% set x = 5 %}{{ x }}{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set msgs = msgs[1:] %}{{ msgs | length }}",
    "{% set x = 1 %}{% for i in l %}{% set x = i %}{% endfor %}{{ x }}",
    "{% set ns = namespace(total=0, found=false) %}{% for i in l %}{% set ns.total = ns.total + i %}{% if i == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.total }} {{ ns.found }} {{ ns.missing }}",
    "{% set ns = namespace() %}{% set ns.i = 0 %}{% set ns.i = ns.i + 1 %}{{ ns.i }}",
    "{% set block %}inner {{ n }}{% endset %}[{{ block }}]{{ block | length }}",
    "{% macro greet(name, greeting='Hi', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Yo') }} {{ greet('C', punct='?') }} {{ greet() }}",
    "{% macro rec(k) %}{{ k }}{% if k > 0 %}{{ rec(k - 1) }}{% endif %}{% endmacro %}{{ rec(4) }}",
    "{% macro m(x) %}{{ x | tojson }}{% endmacro %}{% set y = m(d) %}{{ y }} {{ m(l) | length }}",
    "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} {% for i in range(2) %}{{ i }}{% endfor %}",
    "{{ dict(a=1, b='x') }} {{ namespace(a=1).a }}",
    "{{ strftime_now('%Y') | length }}",
    "{# comment #}a{# multi\nline #}b{#- strip -#}  c",
    "{% generation %}gen {{ n }}{% endgeneration %}",
    # whitespace control, trim_blocks and lstrip_blocks
    "a\n  {% if t %}\n    b\n  {% endif %}\nc\n",
    "a  {%- if t -%}  b  {%- endif -%}  c", "a  {{- s -}}  b", "a\n{{ s }}\nb\n",
    "  {% if t %}x{% endif %}  \n  {{ s }}  \n", "{% if t %}\n\nx\n{% endif %}\n",
    "line1\n    {%+ if t %}kept{% endif %}\n", "{% if t +%}\nkept newline{% endif %}",
    "x\n  {# c #}\ny", "x {# c #}\ny", "\t{% set a = 1 %}\n\t{{ a }}\n",
    "{%- for m in msgs -%}\n  {{ m.role }}\n{%- endfor %}\n", "a\r\nb\r\n{% if t %}\r\nc{% endif %}\r\n",
    "{{ '{{' }} {{ '}}' }} {{ {'a': {'b': 1}} }}", "x\n\n", "{{ s }}\n", "\n",
    "  {%- if t %}a{% endif %}", "{% if t %}a{% endif -%}\n\n   b", "   {% if t %}\n   x\n   {% endif %}   y",
    "text {% if t %}\n inline{% endif %} more",
    # errors (both must fail)
    "{{ raise_exception('custom failure: ' ~ n) }}", "{{ zz.attr }}", "{{ zz['k'] }}", "{{ zz + 1 }}",
    "{{ 'a' + 1 }}", "{{ 1 / 0 }}", "{{ l | tojson(indent=zz) }}", "{{ 'a' < 1 }}", "{{ n | items | list }}",
    "{{ zz | tojson }}", "{{ s() }}", "{{ range(1000000) | length }}", "{{ 5 in 'abc' }}",
    "{% set x.y = 1 %}", "{% for a, b in [1, 2] %}{% endfor %}", "{{ -s }}", "{{ zz() }}",
    "{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "{{ nul + 'x' }}", "{{ l[zz] }}",
]


@pytest.mark.parametrize("idx", range(len(CONSTRUCTS)))
def test_construct(lib, idx):
    source = CONSTRUCTS[idx]
    check(lib, source, V)


# ----------------------------------------------------------------- syntax errors and unsupported constructs

SYNTAX_ERRORS = [
    "{% if %}", "{{ }}", "{% for x in %}", "{% endif %}", "{% if t %}", "{{ 1 + }}", "{{ (1 }}",
    "{% for x in l %}{% endif %}", "{{ 'abc }}", "{# never closed", "{{ x | nosuchfilter }}",
    "{{ x is nosuchtest }}", "{% nosuchtag %}", "{% break %}", "{{ a ! b }}", "{% set %}",
]


@pytest.mark.parametrize("source", SYNTAX_ERRORS)
def test_syntax_error_both(lib, source):
    ok, _ = check(lib, source, V)
    assert not ok


UNSUPPORTED = [
    ("{% raw %}x{% endraw %}", 1, "raw"),
    ("line1\n{% include 'x.jinja' %}", 2, "include"),
    ("a\nb\n{% extends 'base' %}", 3, "extends"),
    ("\n\n\n{% call m() %}x{% endcall %}", 4, "call"),
    ("{% filter upper %}x{% endfilter %}", 1, "filter"),
    ("x\n{% for a in l recursive %}{% endfor %}", 2, "recursive"),
    ("x\n\n{{ s | wordwrap(3) }}", 3, "wordwrap"),
    ("{% with a = 1 %}{% endwith %}", 1, "with"),
    ("{% import 'x' as y %}", 1, "import"),
    ("{% block b %}{% endblock %}", 1, "block"),
    ("{{ f(*l) }}", 1, "*args"),
]


@pytest.mark.parametrize("source,line,name", UNSUPPORTED)
def test_unsupported_construct_names_line(lib, source, line, name):
    ok, msg = render_c(lib, source, V)
    assert not ok
    assert f"line {line}" in msg, msg
    assert name in msg, msg


def test_raise_exception_message(lib):
    ok, msg = render_c(lib, "{{ raise_exception('Conversation roles must alternate!') }}", {})
    assert not ok and msg == "Conversation roles must alternate!"


def test_undefined_attribute_message(lib):
    ok, msg = render_c(lib, "x\n{{ missing.attr }}", {})
    assert not ok and "line 2" in msg and "'missing' is undefined" in msg


def test_strftime_now_matches(lib):
    fmt = "%d %b %Y %A %j"
    ok, out = render_c(lib, "{{ strftime_now('" + fmt + "') }}", {})
    assert ok and out == datetime.now().strftime(fmt)


def test_limits(lib):
    # hostile templates stop with an error instead of hanging or exhausting memory
    for src in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}",
        "{{ 'x' * 100000000000 }}",
        "{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "{% if t %}" * 3000 + "{% endif %}" * 3000,
    ]:
        ok, msg = render_c(lib, src, V)
        assert not ok, src[:60]


# ----------------------------------------------------------------- seeded random conversations

def random_context(rng, model):
    texts = ["hi", "", "  spaced  ", "multi\nline\n", "ünï 😀 中", "quote \" ' \\ done", "<think>r</think>answer",
             "<tool_response>x</tool_response>", "\n\nlead", "trail\n\n", "{\"json\": true}"]
    roles = ["user", "assistant", "user", "assistant", "system", "tool"]
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": rng.choice(texts)})
    for _ in range(rng.randint(0, 6)):
        role = rng.choice(roles)
        m = {"role": role, "content": rng.choice(texts)}
        if role == "assistant" and rng.random() < 0.3:
            m["tool_calls"] = [{"id": rng.choice(["abc123xyz", "short"]), "type": "function",
                                "function": {"name": "get_weather",
                                             "arguments": rng.choice([{"city": rng.choice(texts)}, "{\"a\": 1}"])}}
                               for _ in range(rng.randint(1, 2))]
            if rng.random() < 0.5:
                m["content"] = None
        if role == "tool":
            m["tool_call_id"] = rng.choice(["abc123xyz", "short"])
        if role == "user" and model.startswith("Qwen2-VL") and rng.random() < 0.5:
            m["content"] = [{"type": "image"}, {"type": "text", "text": rng.choice(texts)}]
        if role == "assistant" and rng.random() < 0.2:
            m["reasoning_content"] = rng.choice(texts)
        msgs.append(m)
    ctx = {"messages": msgs, "tools": rng.choice([None, None, TOOLS, []]), "documents": None,
           "add_generation_prompt": rng.random() < 0.5, "bos_token": "<s>", "eos_token": "</s>"}
    if rng.random() < 0.2:
        ctx["enable_thinking"] = rng.random() < 0.5
    if rng.random() < 0.2:
        ctx["add_vision_id"] = True
    return ctx


@pytest.mark.parametrize("model", MODELS)
def test_random_conversations(lib, model):
    import random
    rng = random.Random(sum(map(ord, model)))
    source = (TEMPLATES / f"{model}.jinja").read_text()
    for i in range(150):
        ctx = random_context(rng, model)
        try:
            check(lib, source, ctx)
        except AssertionError as e:
            raise AssertionError(f"{model} random case {i}: {json.dumps(ctx, ensure_ascii=False)}: {e}") from None
