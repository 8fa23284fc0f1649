"""Shared by the architecture tests: overfit one understanding example."""
import torch


def overfit_one_answer(pipe, image, steps: int = 15, lr: float = 3e-3) -> tuple[float, float]:
    """Train `pipe.model` on one (image, question, answer) example; (first loss, last loss)."""
    torch.manual_seed(0)
    ids, labels = pipe.processor.chat_ids([("What colour is the circle?", 1, "red")])
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
             "labels": torch.tensor([labels]), "pixel_values": pipe.processor.pixel_values([image])}
    opt = torch.optim.AdamW(pipe.model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = pipe.model(und=batch)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], losses[-1]
