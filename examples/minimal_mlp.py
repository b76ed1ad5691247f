import torch
from backpack import backpack, extend
from hesscale.optim import AdaHesScale

hidden_units = 128
n_obs = 6
n_classes = 10
lr = 0.0004
batch_size = 1

model = torch.nn.Sequential(
    torch.nn.Linear(n_obs, hidden_units),
    torch.nn.Sigmoid(),
    torch.nn.Linear(hidden_units, hidden_units),
    torch.nn.Tanh(),
    torch.nn.Linear(hidden_units, n_classes),
)
loss_func = torch.nn.CrossEntropyLoss()
optimizer = AdaHesScale(model.parameters(), lr=lr)

extend(model)
extend(loss_func)

inputs = torch.randn((batch_size, n_obs))
target_class = torch.randint(0, n_classes, (batch_size,))

prediction = model(inputs)
optimizer.zero_grad()
loss = loss_func(prediction, target_class)

with backpack(optimizer.method):
    loss.backward()

optimizer.step()

# Beyond the original example: a few more steps on the same batch, printing the loss.
for step in range(5):
    optimizer.zero_grad()
    loss = loss_func(model(inputs), target_class)
    with backpack(optimizer.method):
        loss.backward()
    optimizer.step()
    print(f"step {step + 1}: loss {loss.item():.4f}")
