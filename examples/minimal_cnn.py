import torch
from backpack import backpack, extend
from hesscale.optim import AdaHesScale

channels = 8
image_size = 8
n_classes = 10
lr = 0.0004
batch_size = 1

model = torch.nn.Sequential(
    torch.nn.Conv2d(1, channels, kernel_size=3, padding=1),
    torch.nn.Sigmoid(),
    torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    torch.nn.Tanh(),
    torch.nn.MaxPool2d(2),
    torch.nn.Flatten(),
    torch.nn.Linear(channels * (image_size // 4) ** 2, n_classes),
)
loss_func = torch.nn.CrossEntropyLoss()
optimizer = AdaHesScale(model.parameters(), lr=lr)

extend(model)
extend(loss_func)

inputs = torch.randn((batch_size, 1, image_size, image_size))
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
