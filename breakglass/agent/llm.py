"""The model agent: a bounded Claude tool-use loop inside the policy envelope.

The loop runs until the model ends its turn or a budget trips (turns, tokens,
wall clock). Every ``stop_reason`` has an answer:

- ``tool_use``: run the tools (each inside its deadline and the envelope);
- ``end_turn`` / ``stop_sequence``: the text is the report;
- ``pause_turn``: send the paused turn back as it is, so the model continues;
- ``max_tokens``: the answer (often a tool call) was cut off: it is dropped
  and asked again once with twice the room; cut off again, the runbook takes over;
- ``refusal`` (or anything unknown): the runbook takes over, reason recorded.

On the last allowed turn the request keeps ``tools`` (the history holds tool
blocks, and the API refuses such a request without them) and sends
``tool_choice: {"type": "none"}``, so the model must answer in text. When the
model cannot be used at all (authentication, retries for 429/5xx/529
exhausted) the runbook takes over too. A hand-over report lists every power
verb and mutating command that ran, whoever sent it. A ``stop`` the model
sent is never left standing: ``start`` follows, or the incident escalates
saying the VM is stopped.

The steps it records are the conversation (see :mod:`breakglass.agent.resume`):
an incident resumed mid-conversation after a restart or a takeover goes on from
them, with the turns, tokens and seconds already spent counted against its
budgets; a tool call whose result was never stored is answered as interrupted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anthropic
import structlog

from breakglass.agent.messages import (
    add_to_user_turn,
    block_dict,
    cached_tools,
    first_message,
    operator_instruction,
    system_blocks,
    system_prompt,
    tool_result,
)
from breakglass.agent.resume import INTERRUPTED, CannotRebuild, Rebuilt, rebuild
from breakglass.agent.tools import BY_NAME, Sent, Toolbox
from breakglass.config import AgentSettings
from breakglass.incidents import policy
from breakglass.incidents.context import Instruction, RemediationContext, RemediationResult, Remediator
from breakglass.incidents.governor import Decision, PowerOutcome
from breakglass.remote import RemoteError, Verb

__all__ = ["AgentRemediator", "first_message", "system_prompt"]

log = structlog.get_logger("breakglass.agent")

# How much more room a cut-off answer gets on its one retry.
MAX_TOKENS_RETRY_FACTOR = 2
NONE_CHOICE = {"type": "none"}


class HandOver(Exception):
    """The model cannot finish this incident; the runbook takes over."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why


class AgentRemediator:
    """Remediate through Claude's tool use; fall back to ``fallback`` when the model is unusable."""

    name = "agent"

    def __init__(
        self,
        settings: AgentSettings,
        *,
        api_key: str,
        fallback: Remediator,
        max_retries: int = 2,
    ) -> None:
        self.settings = settings
        self.fallback = fallback
        self._api_key = api_key
        self._max_retries = max_retries

    def _new_client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._api_key,
            base_url=self.settings.base_url,  # None: the SDK reads ANTHROPIC_BASE_URL or its default
            max_retries=self._max_retries,
            timeout=min(120.0, self.settings.wall_clock_seconds),
        )

    async def remediate(self, ctx: RemediationContext) -> RemediationResult:
        """Run the loop; hand over to the fallback when the model cannot be used or finish."""
        sent: list[str] = []
        inner = ctx.power

        async def power(verb: Verb, *, trace: Mapping[str, Any], evidence: policy.Evidence) -> Any:
            out = await inner(verb, trace=trace, evidence=evidence)
            if out.result in ("ok", "failed", "unknown", "dry_run"):
                by = "the model" if trace.get("requested_by") == "agent" else self.fallback.name
                sent.append(f"pve {verb.value} by {by} ({out.result})")
            return out

        ctx = replace(ctx, power=power)
        rebuilt = self._resumed(ctx)
        # Building the client loads CA certificates: tens of milliseconds the core loop must not wait.
        client = await asyncio.to_thread(self._new_client)
        loop = _Loop(self, ctx, client, rebuilt)
        try:
            if rebuilt is not None and rebuilt.report is not None:
                return await loop._result(rebuilt.report)  # it had reported: on to verification
            return await loop.run()
        except HandOver as h:
            return await self._fall_back(ctx, loop, sent, h.kind, h.why)
        except anthropic.AuthenticationError as exc:
            return await self._fall_back(
                ctx, loop, sent, "auth", f"authentication failed: {_api_message(exc)}"
            )
        except anthropic.PermissionDeniedError as exc:
            return await self._fall_back(ctx, loop, sent, "auth", f"permission denied: {_api_message(exc)}")
        except (anthropic.RateLimitError, anthropic.InternalServerError, anthropic.APIConnectionError) as exc:
            why = f"model unavailable after retries: {_api_message(exc)}"
            return await self._fall_back(ctx, loop, sent, "unavailable", why)
        except anthropic.APIError as exc:
            why = f"model request failed: {_api_message(exc)}"
            return await self._fall_back(ctx, loop, sent, "error", why)
        finally:
            await client.close()

    def _resumed(self, ctx: RemediationContext) -> Rebuilt | None:
        """On a resumed pass: the conversation rebuilt from the stored steps, noted; None to start afresh."""
        if ctx.resume is None:
            return None
        try:
            rebuilt = rebuild(ctx.resume.steps, first_message(ctx))
        except CannotRebuild as exc:
            ctx.record("note", {"text": ctx.resume.note(f"the model diagnoses afresh: {exc}")})
            log.warning("agent_conversation_not_resumed", incident=ctx.incident_id, why=str(exc))
            return None
        for call in rebuilt.unanswered:
            # The answer the model gets is stored like any other: the steps stay the conversation.
            ctx.record(
                "tool_result",
                {
                    "id": call["id"],
                    "name": call["name"],
                    "status": "error",
                    "output": INTERRUPTED,
                    "acted": bool(call.get("mutates")),
                    "interrupted": True,
                },
            )
        turn = rebuilt.turns + 1
        if rebuilt.report is not None:
            where = f"the model had reported at turn {rebuilt.turns}; on to verification"
        elif rebuilt.turns == 0:
            where = "the model's conversation starts again at turn 1 (no turn of it had been stored)"
        else:
            where = (
                f"the model's conversation goes on at turn {turn} ({rebuilt.turns} turns rebuilt from "
                f"the stored steps, {rebuilt.tokens} tokens and {rebuilt.elapsed:.0f} s already spent"
            )
            if rebuilt.unanswered:
                n = len(rebuilt.unanswered)
                where += f"; {n} tool call(s) with no stored result answered as interrupted"
            where += ")"
        ctx.record("note", {"text": ctx.resume.note(where)})
        log.info(
            "agent_conversation_resumed",
            incident=ctx.incident_id,
            turn=turn,
            tokens=rebuilt.tokens,
            elapsed=round(rebuilt.elapsed, 3),
            unanswered=len(rebuilt.unanswered),
            reported=rebuilt.report is not None,
        )
        return rebuilt

    async def _fall_back(
        self, ctx: RemediationContext, loop: _Loop, sent: list[str], kind: str, why: str
    ) -> RemediationResult:
        ctx.record("fallback", {"to": self.fallback.name, "kind": kind, "reason": why})
        result = await self.fallback.remediate(replace(ctx, resume=None))  # the resume is noted
        model_acts = [
            f"{a.what} by the model ({a.status})" for a in loop.tools.acted if a.what.startswith("ran")
        ]
        did = (
            f"model agent could not finish ({why}); {self.fallback.name} took over",
            *model_acts,
            *result.did,
        )
        report = result.report
        if report is None:
            verbs = "; ".join(sent) or "none"
            report = (
                f"Found: {result.found}\nDid: {'; '.join(did)}\n"
                f"Power verbs sent during this incident: {verbs}\nState now: see verification."
            )
        outcome = result.outcome
        if outcome == "nothing_to_do" and (sent or model_acts):
            outcome = "acted"
        return replace(result, outcome=outcome, did=did, report=report)


class _Loop:
    """One incident's conversation."""

    def __init__(
        self,
        agent: AgentRemediator,
        ctx: RemediationContext,
        client: anthropic.AsyncAnthropic,
        rebuilt: Rebuilt | None = None,
    ) -> None:
        self.agent = agent
        self.client = client
        self.s = agent.settings
        self.ctx = ctx
        self.tools = Toolbox(ctx)
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": first_message(ctx)}]
        self.tokens = 0
        self.turns = 0  # model turns asked so far in this conversation
        self.started = time.monotonic()
        self.max_tokens = self.s.max_tokens_per_response
        # Operator instructions (their step ids) waiting for the next request, and those sent.
        self.pending: list[Instruction] = []
        self.sent_instructions: set[int] = set()
        self.sending: list[int] = []
        if rebuilt is not None:
            # A resumed conversation: what it spent counts against the budgets. The wall clock
            # counts the time it ran up to its last stored step, not the time the watchdog was down.
            self.messages = rebuilt.messages
            self.tokens, self.turns = rebuilt.tokens, rebuilt.turns
            self.started -= rebuilt.elapsed
            if rebuilt.retried:
                self.max_tokens *= MAX_TOKENS_RETRY_FACTOR
            self.pending = list(rebuilt.pending)
            self.sent_instructions = set(rebuilt.sent_instructions)
            self.tools.acted.extend(rebuilt.acted)
            self.tools.verbs_ok.extend(Verb(v) for v in rebuilt.verbs_ok if v in {x.value for x in Verb})
            if rebuilt.budget is not None:
                self.tools.denied = _budget_denial(rebuilt.budget)

    async def run(self) -> RemediationResult:
        stop_why: str | None = None
        for turn in range(self.turns + 1, self.s.max_turns + 1):
            left = self.s.wall_clock_seconds - (time.monotonic() - self.started)
            if left <= 0:
                stop_why = f"wall-clock limit of {self.s.wall_clock_seconds:.0f} s reached"
                break
            if self.tokens >= self.s.max_tokens_per_incident:
                stop_why = f"token budget spent ({self.tokens} of {self.s.max_tokens_per_incident})"
                break
            final = turn == self.s.max_turns
            self._take_instructions()
            try:
                # Not wait_for: on Python 3.11 it returns the answer when the incident's cancel
                # (a stop, or the incident lost to another process) lands as the answer arrives.
                async with asyncio.timeout(left):
                    resp = await self._ask(final=final)
            except TimeoutError:
                stop_why = f"wall-clock limit of {self.s.wall_clock_seconds:.0f} s reached"
                break
            text = "\n".join(b.text for b in resp.content if b.type == "text").strip()
            reason = resp.stop_reason
            if reason == "tool_use" and not final:
                await self._run_tools(resp)
            elif reason == "tool_use":
                stop_why = f"turn limit of {self.s.max_turns} reached"
                break
            elif reason in ("end_turn", "stop_sequence"):
                return await self._result(text or "(the model ended without a report)")
            elif reason == "pause_turn":
                self.ctx.record("note", {"text": "the model paused its turn; continuing it"})
            elif reason == "max_tokens":
                self._retry_with_room()
            elif reason == "refusal":
                raise HandOver("refusal", f"the model refused to continue: {text[:300] or 'no text'}")
            else:
                raise HandOver("stop_reason", f"the model stopped for an unknown reason {reason!r}")
        else:
            stop_why = f"turn limit of {self.s.max_turns} reached"
        self.ctx.record("note", {"text": f"agent stopped: {stop_why}"})
        return await self._result(None, stopped=stop_why)

    def _retry_with_room(self) -> None:
        """Drop the cut-off answer and ask again with more room, once; then hand over."""
        if self.max_tokens > self.s.max_tokens_per_response:
            raise HandOver(
                "max_tokens", f"the model's answer was cut off at max_tokens twice (last {self.max_tokens})"
            )
        self.messages.pop()  # the truncated assistant turn: a half tool call is never run
        self.max_tokens *= MAX_TOKENS_RETRY_FACTOR
        self.ctx.record(
            "note",
            {"text": f"the model's answer was cut off; asking again with max_tokens {self.max_tokens}"},
        )

    def _take_instructions(self) -> None:
        """Operator instructions added since the last turn become part of the next user turn."""
        pending = [*self.pending, *self.ctx.instructions()]
        self.pending = []
        fresh = []
        for i in pending:
            if i.step is not None:
                if i.step in self.sent_instructions:
                    continue  # already in the conversation (a resumed one)
                self.sent_instructions.add(i.step)
                self.sending.append(i.step)
            fresh.append(i)
        if not fresh:
            return
        add_to_user_turn(self.messages, [operator_instruction(i.who, i.text) for i in fresh])

    async def _ask(self, *, final: bool) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.s.model,
            "max_tokens": self.max_tokens,
            "system": system_blocks(),
            "messages": self.messages,
            "tools": cached_tools(),
        }
        if final:
            kwargs["tool_choice"] = NONE_CHOICE
        resp = await self.client.messages.create(**kwargs)
        self.turns += 1
        sent, self.sending = self.sending, []
        u = resp.usage
        used_in, used_out = u.input_tokens, u.output_tokens
        cache_write = getattr(u, "cache_creation_input_tokens", None) or 0
        cache_read = getattr(u, "cache_read_input_tokens", None) or 0
        self.tokens += used_in + used_out + cache_write + cache_read
        self.ctx.record(
            "usage",
            {
                "input_tokens": used_in,
                "output_tokens": used_out,
                "cache_write_tokens": cache_write,
                "cache_read_tokens": cache_read,
                "stop_reason": resp.stop_reason,
                "total_tokens": self.tokens,
                # What a resumed conversation needs: its place, its time, the instructions it carried.
                "turn": self.turns,
                "elapsed_seconds": round(time.monotonic() - self.started, 3),
                "instructions": sent,
            },
        )
        for block in resp.content:
            if block.type == "text" and block.text.strip():
                self.ctx.record("agent_text", {"text": block.text})
            elif block.type == "tool_use" and resp.stop_reason == "tool_use":
                tool = BY_NAME.get(block.name)
                args = block.input if isinstance(block.input, dict) else {}
                # mutates() may parse a command line: off the core loop.
                mutates = await asyncio.to_thread(tool.mutates, args) if tool is not None else False
                call = {"id": block.id, "name": block.name, "input": block.input, "mutates": mutates}
                self.ctx.record("tool_call", call)
        self.messages.append({"role": "assistant", "content": [block_dict(b) for b in resp.content]})
        return resp

    async def _run_tools(self, resp: Any) -> None:
        self.tools.new_turn()
        results = []
        for block in resp.content:
            if block.type != "tool_use":
                continue
            args = block.input if isinstance(block.input, dict) else {}
            denied = self.tools.denied
            res = await self.tools.call(block.name, args)
            data: dict[str, Any] = {
                "id": block.id,
                "name": block.name,
                "status": res.status,
                "output": res.text,
                "acted": res.acted,
            }
            if self.tools.denied is not denied:
                # The budget refused a power verb: a resumed conversation escalates for the budget too.
                d = self.tools.denied.decision
                data["budget"] = {
                    "verb": d.verb.value,
                    "reason": d.reason,
                    "next_allowed_at": d.next_allowed_at,
                }
            self.ctx.record("tool_result", data)
            results.append(tool_result(block.id, block.name, res.text, is_error=res.is_error))
        self.messages.append({"role": "user", "content": results})

    async def _result(self, report: str | None, *, stopped: str | None = None) -> RemediationResult:
        standing = await self._no_standing_stop()
        denied = self.tools.denied
        actions = tuple(f"{a.what} ({a.status})" for a in self.tools.acted)
        if report is None:
            report = (
                f"Found: agent stopped before finishing ({stopped}).\n"
                f"Did: {'; '.join(actions) or 'nothing'}\n"
                "State now: see verification."
            )
        if standing is not None:
            return RemediationResult(
                outcome="escalate",
                found="the model stopped the VM and it is still stopped",
                did=actions,
                escalation="gave_up",
                detail=standing,
                report=report,
            )
        if denied is not None:
            d = denied.decision
            return RemediationResult(
                outcome="escalate",
                found="the agent needed a power action the budget refused",
                did=actions,
                escalation="budget",
                detail=d.reason,
                next_allowed_at=d.next_allowed_at,
                report=report,
            )
        return RemediationResult(
            outcome="acted" if actions else "nothing_to_do",
            found=report.splitlines()[0] if report else "",
            did=actions,
            report=report,
            detail=stopped or "",
        )

    async def _no_standing_stop(self) -> str | None:
        """After a model's ``stop`` with no later start/cycle: start the VM; why not, if that fails."""
        verbs = self.tools.verbs_ok
        if Verb.STOP not in verbs or verbs[-1] in (Verb.START, Verb.CYCLE):
            return None
        try:
            ev = await policy.observe(self.ctx.shell, self.ctx.pve)
        except RemoteError as exc:  # pragma: no cover - observe catches its own remote errors
            return f"the VM may be stopped (the model sent stop) and its state is unknown: {exc}"
        if ev.vm_status != "stopped":
            return None
        because = "a model's stop is never left standing"
        self.ctx.record("decision", {"decision": "start", "because": because})
        out = await self.ctx.power(
            Verb.START, trace={"requested_by": "watchdog", "because": because}, evidence=ev
        )
        wait = (out.decision.next_allowed_at or 0) - time.time()
        if out.result == "denied" and 0 < wait <= self.ctx.config.incidents.verify_timeout_seconds:
            # The minimum gap since the stop: wait it out once rather than leave the VM off.
            self.ctx.record(
                "note", {"text": f"waiting {wait:.0f} s for the power budget's gap to start the VM"}
            )
            await asyncio.sleep(wait)
            out = await self.ctx.power(
                Verb.START, trace={"requested_by": "watchdog", "because": because}, evidence=ev
            )
        if out.result == "ok":
            self.tools.verbs_ok.append(Verb.START)
            self.tools.acted.append(Sent("pve start after the model's stop", "ok", "watchdog"))
            return None
        why = f"{out.result}: {out.decision.reason}"
        return f"the VM is stopped: the model sent stop and start was not sent ({why})"


def _budget_denial(stored: Mapping[str, Any]) -> PowerOutcome:
    """The budget's refusal of a power verb as stored on its tool_result step."""
    verb = Verb(str(stored["verb"]))
    reason, at = str(stored.get("reason") or "the budget refused"), stored.get("next_allowed_at")
    decision = Decision(False, verb, reason, float(at) if at is not None else None, 0)
    return PowerOutcome(verb, "denied", decision, None, "", None)


def _api_message(exc: anthropic.APIError) -> str:
    status = getattr(exc, "status_code", None)
    return f"HTTP {status}: {exc.message}" if status else exc.message
