"""The API's scheduler without a server: which jobs share a batch, and what each is answered."""
import queue
from dataclasses import replace

from sftkit.generation import Request, build_prompt, generate_answers
from sftkit.generation import scheduler as scheduler_module
from sftkit.generation.scheduler import Job, Scheduler


def test_the_scheduler_batches_only_requests_with_equal_sampling_settings(llama, monkeypatch):
    """Jobs queued together run as one batch per distinct setting, each answered as if alone."""
    config, models = llama
    config = replace(config, api_batch_size=8, max_new_tokens=8)
    batches = []
    real = scheduler_module.BatchStream

    def recording(models, requests, settings, cancel):
        batches.append([(r.prompt, settings.do_sample) for r in requests])
        return real(models, requests, settings, cancel)

    monkeypatch.setattr(scheduler_module, "BatchStream", recording)
    greedy = replace(config, num_return_sequences=1)
    sampled = replace(greedy, do_sample=True, temperature=1.5, seed=3)
    settings = {"one": greedy, "two": sampled, "three": greedy}
    prompts = {name: build_prompt(models.tokenizer, [], name, config, 512).text for name in settings}
    inboxes = {name: queue.Queue() for name in settings}
    scheduler = Scheduler(models, config)
    try:
        with scheduler.condition:  # the worker waits until all three are queued
            for name in settings:
                scheduler.submit(Job([Request(prompts[name])], settings[name], lambda *e, q=inboxes[name]: q.put(e)))
        answers = {}
        for name, inbox in inboxes.items():
            while (event := inbox.get(timeout=120))[0] != "done":
                pass
            answers[name] = event[1][0].text
    finally:
        scheduler.stop()
    assert sorted(len(batch) for batch in batches) == [1, 2], batches
    assert all(len({sample for _, sample in batch}) == 1 for batch in batches), batches
    for name in settings:
        assert answers[name] == generate_answers(models, [prompts[name]], settings[name])[0].text
